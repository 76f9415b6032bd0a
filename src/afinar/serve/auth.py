"""Request authentication for a server bound beyond loopback.

Two ways in: AWS Signature Version 4 (what boto3 sends), verified against `access_keys` by
recomputing the signature with botocore's own signer over the headers the client signed; or
`Authorization: Bearer <key>` with one of `api_keys`.
"""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import re

from afinar.config import Settings
from afinar.serve.awsproto import ApiError

MAX_SKEW = dt.timedelta(minutes=15)
_AUTH_RE = re.compile(r"AWS4-HMAC-SHA256\s+Credential=([^,\s]+),\s*SignedHeaders=([^,\s]+),"
                      r"\s*Signature=([0-9a-f]+)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_required(settings: Settings) -> bool:
    return settings.require_auth or not is_loopback(settings.host)


def check(settings: Settings, method: str, host: str, raw_path: str, query: str, headers,
          body: bytes) -> str:
    """The caller's identity, or an AccessDeniedException saying what is wrong."""
    auth = headers.get("authorization", "")
    if auth.startswith("Bearer "):
        key = auth[len("Bearer "):].strip()
        if any(hmac.compare_digest(key, k) for k in settings.api_keys):
            return "api-key"
        raise ApiError("AccessDeniedException", "the bearer API key is not one of api_keys")
    m = _AUTH_RE.match(auth)
    if not m:
        raise ApiError("AccessDeniedException",
                       "this server is not on loopback, so requests must be signed (SigV4, as "
                       "boto3 does with credentials from access_keys) or carry "
                       "'Authorization: Bearer <api key>'")
    cred, signed_headers, signature = m.groups()
    parts = cred.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise ApiError("AccessDeniedException", f"malformed SigV4 credential scope '{cred}'")
    akid, date, region, service = parts[:4]
    secret = settings.access_keys.get(akid)
    if secret is None:
        raise ApiError("AccessDeniedException", f"unknown access key id '{akid}'")
    amz_date = headers.get("x-amz-date", "")
    try:
        ts = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ApiError("AccessDeniedException", "missing or malformed X-Amz-Date") from None
    if abs(dt.datetime.now(dt.UTC) - ts) > MAX_SKEW:
        raise ApiError("AccessDeniedException", "the request signature has expired (clock skew "
                       "over 15 minutes)")
    expected = _signature(secret, akid, region, service, amz_date, method, host, raw_path,
                          query, headers, signed_headers.split(";"), body)
    if not hmac.compare_digest(expected, signature):
        raise ApiError("AccessDeniedException", "the request signature does not match; check "
                       "the secret key for access key " + akid)
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
