"""Request authentication for a server bound beyond loopback (or with `require_auth`).

Three ways in, checked by the gate (gate.py) on every route but the health check: AWS Signature
Version 4 (what boto3 sends), verified against `access_keys` by recomputing the signature with
botocore's own signer over the headers the client signed; `Authorization: Bearer <key>` with
one of `api_keys` (the OpenAI client's way); or a console session started with one of those keys.
Unknown keys and wrong keys or signatures get the same message.
"""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import re

from afinar.config import Settings

MAX_SKEW = dt.timedelta(minutes=15)
_AUTH_RE = re.compile(r"AWS4-HMAC-SHA256\s+Credential=([^,\s]+),\s*SignedHeaders=([^,\s]+),"
                      r"\s*Signature=([0-9a-f]+)")
INVALID = ("the credentials are not valid: the API key or access key is not one this server "
           "accepts, or the signature does not match")
MISSING = ("authentication is required: sign requests with SigV4 (boto3 with credentials from "
           "access_keys) or send 'Authorization: Bearer <one of api_keys>'")


class AuthError(Exception):
    """Why a request's credentials were refused (the gate answers 401/403)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def auth_required(settings: Settings) -> bool:
    return settings.require_auth or not is_loopback(settings.host)


def valid_api_key(settings: Settings, key: str) -> bool:
    ok = False
    for k in settings.api_keys:  # compare with every key: the time says nothing
        ok |= hmac.compare_digest(key.encode(), k.encode())
    return ok


def valid_access_key(settings: Settings, akid: str, secret: str) -> bool:
    known = settings.access_keys.get(akid)
    return known is not None and hmac.compare_digest(secret.encode(), known.encode())


def _parts(headers) -> tuple[str, str, str, list[str], str]:
    m = _AUTH_RE.match(headers.get("authorization", ""))
    if not m:
        raise AuthError("malformed SigV4 Authorization header")
    cred, signed_headers, signature = m.groups()
    parts = cred.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise AuthError("malformed SigV4 credential scope")
    return parts[0], parts[2], parts[3], signed_headers.split(";"), signature


def precheck(settings: Settings, headers) -> None:
    """What can be checked before the body is read: the header's shape, a known key id, the
    date. The signature itself covers the body (`check`)."""
    akid, *_ = _parts(headers)
    if akid not in settings.access_keys:
        raise AuthError(INVALID)
    amz_date = headers.get("x-amz-date", "")
    try:
        ts = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise AuthError("missing or malformed X-Amz-Date") from None
    if abs(dt.datetime.now(dt.UTC) - ts) > MAX_SKEW:
        raise AuthError("the request signature has expired (clock skew over 15 minutes)")


def check(settings: Settings, method: str, host: str, raw_path: str, query: str, headers,
          body: bytes) -> str:
    """The caller's access key id, or AuthError."""
    precheck(settings, headers)
    akid, region, service, signed, signature = _parts(headers)
    expected = _signature(settings.access_keys[akid], akid, region, service,
                          headers.get("x-amz-date", ""), method, host, raw_path, query, headers,
                          signed, body)
    if not hmac.compare_digest(expected, signature):
        raise AuthError(INVALID)
    return akid


def _signature(secret, akid, region, service, amz_date, method, host, raw_path, query, headers,
               signed, body) -> str:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    hdrs = {}
    for h in signed:
        hdrs[h] = host if h == "host" else headers.get(h, "")
    url = f"http://{host}{raw_path}" + (f"?{query}" if query else "")
    req = AWSRequest(method=method, url=url, headers=hdrs, data=body)
    req.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(akid, secret), service, region)
    canonical = signer.canonical_request(req)
    return signer.signature(signer.string_to_sign(req, canonical), req)
