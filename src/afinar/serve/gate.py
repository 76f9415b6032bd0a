"""The server's front door: one ASGI middleware that every request passes before any route runs.

In order, each check on headers alone, before a byte of the body is read:
1. Host: only the bound address, loopback names and `allowed_hosts` (a DNS-rebinding page's
   `Host: attacker.example` is refused).
2. Web pages: a state-changing request (POST/PUT/PATCH/DELETE) from another site (`Sec-Fetch-Site:
   cross-site|same-site`, or an `Origin` that is not this server) is refused, and so is one whose
   body is a type a page can send without a CORS preflight (text/plain, a form, or none from a
   browser): API routes take JSON; upload routes any other type.
3. Authentication (when `require_auth` or not on loopback), on every route but `/afinar/health`:
   a bearer API key, a console session cookie, or SigV4 (header checks now; the signature, which
   covers the body, once the body is read).
4. Size: `Content-Length` over the route's limit is refused at once, and the body is counted as it
   arrives, so an unauthenticated or oversized POST never sits in memory. API bodies are read
   here (bounded, `max_request_mb`) and replayed to the route; upload routes stream
   (`max_upload_mb`) and read `BodyTooLarge` from `receive` past the limit.
Every response gets no-sniff and frame headers; HTML pages a Content-Security-Policy.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from urllib.parse import quote, urlsplit

from afinar.config import Settings
from afinar.serve import auth

UPLOAD_ROUTES = ("/afinar/uploads", "/afinar/data/check")
# OpenAI's file upload is a multipart form: taken there only (a browser's cross-site form post
# is still refused by the Origin / Sec-Fetch-Site checks, and by authentication when exposed)
MULTIPART_ROUTES = ("/v1/files",)
OPEN_ROUTES = ("/afinar/health", "/console/login", "/console/static/")
JSON_TYPES = ("application/json", "application/x-amz-json-1.0", "application/x-amz-json-1.1")
SIMPLE_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "")
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
SESSION_COOKIE = "afinar_session"
SESSION_TTL_S = 12 * 3600
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
       "script-src 'self'; connect-src 'self'; frame-ancestors 'self'; base-uri 'none'; "
       "form-action 'self'")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"SAMEORIGIN"),
                    (b"referrer-policy", b"no-referrer")]


class BodyTooLarge(Exception):
    """Raised by `receive` when a streamed body passes the route's limit."""


class Denied(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Sessions:
    """Console logins: random tokens kept in memory (a restart logs everyone out)."""

    def __init__(self):
        self.tokens: dict[str, float] = {}

    def start(self) -> str:
        now = time.time()
        self.tokens = {t: exp for t, exp in self.tokens.items() if exp > now}
        token = secrets.token_urlsafe(32)
        self.tokens[token] = now + SESSION_TTL_S
        return token

    def valid(self, token: str | None) -> bool:
        return bool(token) and self.tokens.get(token, 0) > time.time()

    def end(self, token: str | None) -> None:
        self.tokens.pop(token or "", None)


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _cookie(headers: dict, name: str) -> str | None:
    for part in headers.get("cookie", "").split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return None


def _hostname(netloc: str) -> str:
    try:
        return (urlsplit("//" + netloc).hostname or "").lower()
    except ValueError:
        return ""


class Gate:
    def __init__(self, app, settings: Settings, sessions: Sessions):
        self.app, self.settings, self.sessions = app, settings, sessions
        self.need_auth = auth.auth_required(settings)
        bound = settings.host.lower().strip("[]")
        names = {n.lower().strip("[]") for n in settings.allowed_hosts}
        self.any_host = bound in ("0.0.0.0", "::") and not names  # auth guards a wildcard bind
        self.hosts = names | {bound, "localhost", "127.0.0.1", "::1"}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = self._with_security_headers(send)
        try:
            admitted = await self._admit(scope, receive)
        except Denied as e:
            await _drain_small(scope, receive)
            return await self._deny(scope, send, e)
        receive = admitted
        try:
            await self.app(scope, receive, send)
        except BodyTooLarge:
            await self._deny(scope, send, Denied(413, "ValidationException", self._too_large(
                scope["path"])))

    # -- the checks --------------------------------------------------------------------------
    async def _admit(self, scope, receive) -> Callable:
        path, method = scope["path"], scope["method"]
        h = _headers(scope)
        host = _hostname(h.get("host", ""))
        if not self.any_host and host not in self.hosts:
            raise Denied(403, "AccessDeniedException", f"this server does not answer to host "
                         f"'{host[:100]}'; add it to allowed_hosts in afinar.toml if it is "
                         f"yours")
        upload = path.startswith(UPLOAD_ROUTES)
        multipart = method == "POST" and path in MULTIPART_ROUTES
        if method in STATE_CHANGING:
            self._same_site(h)
            self._content_type(h, upload, multipart)
        sigv4 = None
        if self.need_auth and not path.startswith(OPEN_ROUTES):
            sigv4 = self._authenticate(h, upload)
        limit = (self.settings.max_upload_mb if upload or multipart
                 else self.settings.max_request_mb) * 2**20
        length = h.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise Denied(413, "ValidationException", self._too_large(path))
        if upload:
            return _counting(receive, limit)
        scope["afinar.body_read"] = True  # from here on, nothing is left to drain
        body = await _read(receive, limit, path, self._too_large)
        if sigv4:
            raw = scope.get("raw_path", b"").decode("latin-1") or path
            try:
                auth.check(self.settings, method, h.get("host", ""), raw,
                           scope.get("query_string", b"").decode("latin-1"), h, body)
            except auth.AuthError as e:
                raise Denied(403, "AccessDeniedException", str(e)) from None
        return _replay(body, receive)

    def _same_site(self, h: dict) -> None:
        site = h.get("sec-fetch-site")
        if site in ("cross-site", "same-site"):
            raise Denied(403, "AccessDeniedException", f"a state-changing request from another "
                         f"site (Sec-Fetch-Site: {site}) is refused")
        origin = h.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            if origin == "null" or parts.netloc.lower() != h.get("host", "").lower():
                raise Denied(403, "AccessDeniedException", f"a state-changing request from "
                             f"origin '{origin[:100]}' is refused: only this server's own "
                             f"pages may send them")

    def _content_type(self, h: dict, upload: bool, multipart: bool = False) -> None:
        has_body = h.get("content-length", "0") != "0" or "transfer-encoding" in h
        if not has_body:
            return
        ctype = h.get("content-type", "").split(";")[0].strip().lower()
        if multipart:
            if ctype != "multipart/form-data":
                raise Denied(415, "ValidationException", f"a file upload is a multipart form "
                             f"(Content-Type: multipart/form-data), got '{ctype or 'none'}'")
            return
        if not ctype and "origin" not in h and "sec-fetch-site" not in h:
            return  # not a browser (boto3's InvokeModel sends its blob body untyped)
        if upload:
            if ctype in SIMPLE_TYPES:
                raise Denied(415, "ValidationException", f"an upload's Content-Type must not "
                             f"be '{ctype or 'missing'}' (a type web pages send without asking);"
                             f" send application/octet-stream")
        elif not (ctype in JSON_TYPES or ctype.endswith("+json")):
            raise Denied(415, "ValidationException", f"the request body must be JSON with "
                         f"Content-Type: application/json (got '{ctype or 'none'}')")

    def _authenticate(self, h: dict, upload: bool) -> bool:
        """True when a SigV4 signature is still to be checked against the body."""
        if self.sessions.valid(_cookie(h, SESSION_COOKIE)):
            return False
        authz = h.get("authorization", "")
        if authz.startswith("Bearer "):
            if auth.valid_api_key(self.settings, authz[len("Bearer "):].strip()):
                return False
            raise Denied(401, "AccessDeniedException", auth.INVALID)
        if authz.startswith("AWS4-HMAC-SHA256"):
            if upload:
                raise Denied(403, "AccessDeniedException", "uploads take a bearer API key "
                             "(Authorization: Bearer <one of api_keys>), not SigV4")
            try:
                auth.precheck(self.settings, h)
            except auth.AuthError as e:
                raise Denied(403, "AccessDeniedException", str(e)) from None
            return True
        raise Denied(401, "AccessDeniedException", auth.MISSING)

    def _too_large(self, path: str) -> str:
        if path.startswith(UPLOAD_ROUTES) or path in MULTIPART_ROUTES:
            return (f"the upload is larger than max_upload_mb ({self.settings.max_upload_mb} "
                    f"MB)")
        return (f"the request body is larger than max_request_mb "
                f"({self.settings.max_request_mb} MB)")

    # -- responses ---------------------------------------------------------------------------
    def _with_security_headers(self, send):
        async def wrapped(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += SECURITY_HEADERS
                ctype = dict(headers).get(b"content-type", b"")
                if ctype.startswith(b"text/html"):
                    headers.append((b"content-security-policy", CSP.encode()))
                message = dict(message, headers=headers)
            await send(message)
        return wrapped

    async def _deny(self, scope, send, e: Denied) -> None:
        path, method = scope["path"], scope["method"]
        headers = [(b"content-type", b"application/json")]
        if path.startswith("/v1/"):
            kind = "invalid_request_error" if e.status != 401 else "authentication_error"
            code = {401: "invalid_api_key", 413: "request_too_large",
                    415: "unsupported_media_type"}.get(e.status, "forbidden")
            body = {"error": {"message": e.message, "type": kind, "code": code, "param": None}}
        else:
            body = {"message": e.message, "code": e.code}
            headers.append((b"x-amzn-errortype", e.code.encode()))
        if e.status == 401 and method == "GET" and (path == "/" or path.startswith("/console")):
            # a browser without a session: to the login page, then back
            where = "/console/login?next=" + quote(path)
            headers = [(b"location", where.encode())]
            await send({"type": "http.response.start", "status": 303, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        data = json.dumps(body).encode()
        headers.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": e.status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


async def _drain_small(scope, receive, most: int = 64 * 1024) -> None:
    """Read a small refused body before answering: a server that closes with unread bytes
    makes the kernel send a reset, which can reach the client before the answer does."""
    length = _headers(scope).get("content-length", "")
    if scope.get("afinar.body_read") or not length.isdigit() or not 0 < int(length) <= most:
        return  # none, or large: not worth reading
    n = 0
    while n < int(length):
        msg = await receive()
        if msg["type"] != "http.request":
            return
        n += len(msg.get("body", b""))
        if not msg.get("more_body"):
            return


async def _read(receive, limit: int, path: str, too_large) -> bytes:
    chunks, n = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            break
        chunk = msg.get("body", b"")
        n += len(chunk)
        if n > limit:
            raise Denied(413, "ValidationException", too_large(path))
        chunks.append(chunk)
        if not msg.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive):
    """The body read here, then the connection's own messages (a streaming response listens
    for the client's disconnect)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replayed


def _counting(receive, limit: int):
    n = 0

    async def counted():
        nonlocal n
        msg = await receive()
        if msg["type"] == "http.request":
            n += len(msg.get("body", b""))
            if n > limit:
                raise BodyTooLarge()
        return msg
    return counted
