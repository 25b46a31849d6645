"""What the API and the dashboard share over HTTP: the error every route raises and its JSON
shape, the orjson response the hot endpoints return, the bearer-token check, and how a
transaction and a timestamp look in an answer. Its own module so that the dashboard uses
the same shapes as the API without importing the API (which mounts the dashboard)."""

from __future__ import annotations

import functools
import math
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from coordinator.auth import AuthFailed, Principal, TokenTable
from coordinator.model import Transaction

ISO_SECONDS_CACHED = 4096  # formatted whole seconds kept for `iso` (timestamps cluster)


class ApiError(Exception):
    """An answer other than success: `status`, a stable `code` and a message (and headers
    or extra fields), rendered as `{"error": {"code", "message"}, ...}`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}


class FastJSON(Response):
    """JSON rendered by orjson. The hot endpoints return it directly, so FastAPI neither
    re-validates nor re-serializes their answer (their documented shape is the return
    annotation's)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}, **extra}, status_code=status, headers=headers
    )


def iso(ts: float | None) -> str | None:
    """`2026-11-26T15:04:05.123Z`: a timestamp as the API shows it (UTC, milliseconds).

    The same string as datetime's `isoformat(timespec="milliseconds")` (microseconds rounded
    as `datetime.fromtimestamp` rounds them, then cut), built from a cache of whole seconds:
    an answer carries up to 6 + 4 per participant of these, and datetime's way was ~2% of a
    leader's CPU under load."""
    if ts is None:
        return None
    frac, whole = math.modf(ts)
    sec, us = int(whole), round(frac * 1e6)
    if not 0 <= us < 1_000_000 or ts < 0:  # carried into the next second, or before 1970
        return iso_slow(ts)
    return f"{_iso_second(sec)}.{us // 1000:03d}Z"


def iso_slow(ts: float) -> str:
    return (
        datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


@functools.lru_cache(maxsize=ISO_SECONDS_CACHED)
def _iso_second(sec: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))


def txn_json(t: Transaction) -> dict[str, Any]:
    return {
        "txid": t.txid,
        "state": t.state.value,
        "outcome": t.outcome.value if t.outcome else None,
        "decision_reason": t.decision_reason,
        "labels": t.labels,
        "idempotency_key": t.idempotency_key,
        "timeout_s": t.timeout_s,
        "created_at": iso(t.created_at),
        "expires_at": iso(t.expires_at),
        "updated_at": iso(t.updated_at),
        "prepare_started_at": iso(t.prepare_started_at),
        "decided_at": iso(t.decided_at),
        "completed_at": iso(t.completed_at),
        "heuristic": t.heuristic.value if t.heuristic else None,
        "heuristic_acknowledged": t.heuristic_acknowledged,
        # Retention (docs/retention.md): when the record left the replicated state. A
        # forgotten transaction read from the replicated state is its tombstone (decision
        # only); one read from this node's history is its full record (`source`).
        "forgotten_at": iso(t.forgotten_at),
        "participants": [
            {
                "name": p.name,
                "url": p.url,
                "vote": p.vote.value if p.vote else None,
                "vote_reason": p.vote_reason,
                "phase2": p.phase2.value,
                "attempts": p.attempts,
                "last_error": p.last_error,
                "heuristic": p.heuristic,
                "enlisted_at": iso(p.enlisted_at),
                "voted_at": iso(p.voted_at),
                "last_attempt_at": iso(p.last_attempt_at),
                "acked_at": iso(p.acked_at),
            }
            for p in t.participants
        ],
    }


def authenticated(tokens: TokenTable, request: Request) -> Principal:
    """The caller's principal, or a 401 in the API's error shape."""
    try:
        return tokens.principal(request.headers.get("authorization"))
    except AuthFailed as e:
        raise ApiError(401, "unauthenticated", str(e), {"WWW-Authenticate": "Bearer"}) from None
