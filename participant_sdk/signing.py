"""Signatures between the coordinator and a participant, both ways (DESIGN §5: "each
request is authenticated").

Each participant has its own secret (the coordinator's registry names it; docs/security.md).
Four kinds of signed bytes, each starting differently so that none can pass for another:

| signed thing | by | covers | scheme |
|---|---|---|---|
| protocol request (prepare, commit, abort, batch) | coordinator | time, method, path, body | v1 |
| participant's call (enlist, outcome) | participant | domain, name, time, method, path, body | p1 |
| answer to a signed request (vote, outcome) | answerer | domain, request's sig, status, body | a1 |
| deferred enlistment | participant | domain, txid, name, url, vote | e1 |

Headers: `Txc-Timestamp` and `Txc-Signature` on requests (with `Txc-Participant` on a
participant's), `Txc-Answer-Signature` on answers, the `e1` signature inside `Txc-Enlistment`.

Why signatures rather than bearer tokens: the coordinator and its participants may talk over
plain HTTP, and a signature read off one message cannot be used to forge another (another
txid, another action, another answer); a request's goes stale after `MAX_SKEW_S`. Replaying
an identical request inside that window is harmless: every protocol message is idempotent
(DESIGN §3 rule 7). An answer is bound to the request it answers, so a recorded "yes" or
"commit" cannot be replayed as the answer to another request.

Several secrets may be valid at once (rotation): the first one signs, any one verifies.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

SIGNATURE_HEADER = "Txc-Signature"
TIMESTAMP_HEADER = "Txc-Timestamp"
PARTICIPANT_HEADER = "Txc-Participant"
ANSWER_SIGNATURE_HEADER = "Txc-Answer-Signature"
SCHEME = "v1"
PARTICIPANT_SCHEME = "p1"
ANSWER_SCHEME = "a1"
MAX_SIGNATURE_CHARS = 128  # a scheme, '=' and 64 hex digits, with room to spare
MAX_SECRETS = 4  # valid at once for one participant (rotation needs two)
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


def _secrets(secret: str | Sequence[str]) -> tuple[str, ...]:
    out = (secret,) if isinstance(secret, str) else tuple(secret)
    assert out and all(out), "at least one non-empty secret"
    assert len(out) <= MAX_SECRETS
    return out


def _fresh(timestamp: str, now: float | None) -> None:
    try:
        ts = float(timestamp)
    except ValueError:
        raise SignatureError(403, "bad_signature", "malformed timestamp") from None
    now = time.time() if now is None else now
    if not abs(now - ts) <= MAX_SKEW_S:  # also refuses nan
        raise SignatureError(403, "stale_signature", "timestamp outside the allowed clock skew")


def _matches(expected: list[str], given: str) -> bool:
    """Constant-time in the signature's content; every candidate is compared."""
    found = False
    for e in expected:
        found |= hmac.compare_digest(e.encode(), given.encode())
    return found


def verify(
    secret: str | Sequence[str],
    method: str,
    path: str,
    timestamp: str | None,
    given: str | None,
    body: bytes,
    now: float | None = None,
) -> None:
    """Check a coordinator's protocol request (`secret`: one, or the valid ones)."""
    _check(
        "the coordinator",
        timestamp,
        given,
        now,
        lambda ts: [signature(s, ts, method, path, body) for s in _secrets(secret)],
    )


def _check(
    who: str,
    timestamp: str | None,
    given: str | None,
    now: float | None,
    expected: Callable[[str], list[str]],
) -> None:
    """Present, fresh, and one of `expected(timestamp)`; SignatureError otherwise."""
    if not timestamp or not given:
        raise SignatureError(401, "unsigned", f"{who}'s signature is required")
    if len(given) > MAX_SIGNATURE_CHARS:
        raise SignatureError(403, "bad_signature", "signature does not match")
    _fresh(timestamp, now)
    if not _matches(expected(timestamp), given):
        raise SignatureError(403, "bad_signature", "signature does not match")


# -- a participant's own requests to the coordinator (enlist, outcome) -------------------------

_PARTICIPANT_DOMAIN = b"txc-participant-request\n"  # never the start of another signed thing


def participant_signature(
    secret: str, name: str, timestamp: str, method: str, path: str, body: bytes
) -> str:
    """Why the participant signs its calls instead of showing a bearer token: the token
    would let whoever reads it off the wire enlist as this participant; a signature is good
    for this call only. The name is signed, so one participant's secret proves nothing
    about another's name."""
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)
    mac.update(_PARTICIPANT_DOMAIN)
    mac.update(f"{name}\n{timestamp}\n{method.upper()}\n{path}\n".encode())
    mac.update(body)
    return f"{PARTICIPANT_SCHEME}={mac.hexdigest()}"


def participant_headers(
    name: str, secret: str, method: str, url: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """The headers that make one call to the coordinator this participant's."""
    ts = f"{time.time() if now is None else now:.3f}"
    path = urlsplit(url).path or "/"
    return {
        PARTICIPANT_HEADER: name,
        TIMESTAMP_HEADER: ts,
        SIGNATURE_HEADER: participant_signature(secret, name, ts, method, path, body),
    }


def verify_participant(
    secrets: Sequence[str],
    name: str,
    method: str,
    path: str,
    timestamp: str | None,
    given: str | None,
    body: bytes,
    now: float | None = None,
) -> None:
    """Check that participant `name` (whose valid secrets are `secrets`) made this call."""
    _check(
        "the participant",
        timestamp,
        given,
        now,
        lambda ts: [
            participant_signature(s, name, ts, method, path, body) for s in _secrets(secrets)
        ],
    )


# -- answers to signed requests ----------------------------------------------------------------

_ANSWER_DOMAIN = b"txc-answer\n"


def answer_signature(secret: str, request_signature: str, status: int, body: bytes) -> str:
    """The answerer's proof of an answer (a vote, an outcome, an acknowledgement), bound to
    the request it answers: without it, anyone on the path could answer "yes" for a
    participant that voted no, or "commit" for work that was aborted."""
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)
    mac.update(_ANSWER_DOMAIN)
    mac.update(f"{request_signature}\n{status}\n".encode())
    mac.update(body)
    return f"{ANSWER_SCHEME}={mac.hexdigest()}"


def answer_valid(
    secrets: str | Sequence[str],
    request_signature: str,
    status: int,
    body: bytes,
    given: str | None,
) -> bool:
    if not given or len(given) > MAX_SIGNATURE_CHARS:
        return False
    expected = [answer_signature(s, request_signature, status, body) for s in _secrets(secrets)]
    return _matches(expected, given)


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
    secret: str | Sequence[str],
    txid: str,
    name: str,
    url: str,
    vote: str | None,
    given: str | None,
) -> bool:
    if not given or len(given) > MAX_SIGNATURE_CHARS:
        return False
    expected = [enlistment_signature(s, txid, name, url, vote) for s in _secrets(secret)]
    return _matches(expected, given)
