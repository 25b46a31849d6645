"""Signatures on coordinator → participant requests (DESIGN §5: "each request is
authenticated").

The coordinator signs each protocol request with the participant secret (HMAC-SHA256 over
the timestamp, method, path and body); the participant verifies it. Unlike a bearer token,
a signature read off one request cannot be used to forge another one (a different txid or
action), and it goes stale after `MAX_SKEW_S`. Replaying an identical request inside that
window is harmless: every protocol message is idempotent (DESIGN §3 rule 7).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlsplit

SIGNATURE_HEADER = "Txc-Signature"
TIMESTAMP_HEADER = "Txc-Timestamp"
SCHEME = "v1"
MAX_SKEW_S = 300.0  # clocks of coordinator and participant may differ by this much


class SignatureError(Exception):
    """Why a request was refused: `status` 401 (unsigned) or 403 (bad or stale)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def signature(secret: str, timestamp: str, method: str, path: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)
    mac.update(f"{timestamp}\n{method.upper()}\n{path}\n".encode())
    mac.update(body)
    return f"{SCHEME}={mac.hexdigest()}"


def signed_headers(
    secret: str, method: str, url: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """The headers that authenticate one request to `url` (only its path is signed, so a
    participant behind a proxy that keeps paths verifies the same bytes)."""
    ts = f"{time.time() if now is None else now:.3f}"
    path = urlsplit(url).path or "/"
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: signature(secret, ts, method, path, body)}


def verify(
    secret: str,
    method: str,
    path: str,
    timestamp: str | None,
    given: str | None,
    body: bytes,
    now: float | None = None,
) -> None:
    if not timestamp or not given:
        raise SignatureError(401, "unsigned", "the coordinator's signature is required")
    try:
        ts = float(timestamp)
    except ValueError:
        raise SignatureError(403, "bad_signature", "malformed timestamp") from None
    now = time.time() if now is None else now
    if abs(now - ts) > MAX_SKEW_S:
        raise SignatureError(403, "stale_signature", "timestamp outside the allowed clock skew")
    expected = signature(secret, timestamp, method, path, body)
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise SignatureError(403, "bad_signature", "signature does not match")


# -- enlistments a client carries to the commit (deferred enlistment) -------------------------

ENLISTMENT_SCHEME = "e1"
_ENLISTMENT_DOMAIN = b"txc-enlistment\n"  # never the start of a request's signed bytes


def enlistment_signature(secret: str, txid: str, name: str, url: str, vote: str | None) -> str:
    """The participant's proof that it did its part of `txid` (and, with vote "yes", that
    it prepared it) when the client, not the participant, enlists it with the commit.

    Why a signature: enlisting is the participant role's call; a client token must not be
    able to name a participant (and a URL the coordinator will then send signed phase-2
    messages to) on its own. The signed bytes start with a fixed domain, so no protocol
    request signature (which starts with a timestamp) can pass for one, or the reverse."""
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)
    mac.update(_ENLISTMENT_DOMAIN)
    mac.update(f"{txid}\n{name}\n{url}\n{vote or ''}".encode())
    return f"{ENLISTMENT_SCHEME}={mac.hexdigest()}"


def enlistment_valid(
    secret: str, txid: str, name: str, url: str, vote: str | None, given: str | None
) -> bool:
    if not given:
        return False
    expected = enlistment_signature(secret, txid, name, url, vote)
    return hmac.compare_digest(expected.encode(), given.encode())
