"""The SDK's exceptions.

One hierarchy (`TxcError`) for everything the SDK raises, so callers can catch it all at
once, with subclasses for the cases a caller must tell apart: the transaction aborted (do not
retry the business operation under this txid), the coordinator cannot be reached (the outcome
may still be decided later), or a participant refused work (HTTP 409 to the caller).
Every error carries the server's error `code` when there was one, so the coordinator's own
vocabulary (DESIGN §4) reaches the caller unchanged.
"""

from __future__ import annotations

from typing import Any


class TxcError(Exception):
    """Base of every SDK error. `code` is the server's (or the SDK's) machine-readable code,
    `status` the HTTP status that produced it (None when no HTTP answer arrived)."""

    default_code = "txc_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.status = status
        self.body = body or {}

    def __str__(self) -> str:
        where = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.code}: {self.message}{where}"


# -- coordinator client errors ---------------------------------------------------------------


class CoordinatorUnavailable(TxcError):
    """No coordinator node gave an answer within the retry budget (network errors, 5xx, no
    leader). For commit this means: the outcome is unknown to the caller, not that it failed;
    ask `outcome(txid)` later."""

    default_code = "coordinator_unavailable"


class InvalidRequest(TxcError):
    """400/422: the coordinator rejected the request's content. Retrying will not help."""

    default_code = "invalid_request"


class AuthenticationFailed(TxcError):
    """401/403: missing or wrong bearer token."""

    default_code = "unauthorized"


class TransactionNotFound(TxcError):
    """404: the coordinator has no such transaction."""

    default_code = "not_found"


class TransactionConflict(TxcError):
    """409: the request conflicts with the transaction's state (e.g. enlisting after the
    transaction stopped being active)."""

    default_code = "conflict"


class TransactionAborted(TransactionConflict):
    """The transaction's outcome is ABORT (commit answered 409, or the caller's own abort)."""

    default_code = "aborted"


class TransactionAlreadyCommitted(TransactionConflict):
    """Abort was requested but the outcome is already COMMIT."""

    default_code = "committed"


# -- participant-side errors -----------------------------------------------------------------


class ParticipantError(TxcError):
    """A participant-side failure that the FastAPI integration turns into an HTTP answer to
    the business caller (`status` is that answer's status)."""

    default_code = "participant_error"
    default_status = 500

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message, code=code, status=status or self.default_status)


class WorkRefused(ParticipantError):
    """409: this participant will not (or can no longer) do work for the transaction: it was
    aborted here, was already prepared here by an earlier request, or the coordinator refused
    the enlistment. The caller should abort the global transaction."""

    default_code = "work_refused"
    default_status = 409


class EnlistmentUncertain(ParticipantError):
    """503: the work is prepared but the enlistment's fate is unknown (network error or 5xx
    from the coordinator). The prepared work stays in doubt until the coordinator's outcome
    resolves it (periodic recovery asks `/outcome`). The caller should abort the global
    transaction or retry its commit; either way every participant converges."""

    default_code = "enlistment_uncertain"
    default_status = 503


class MissingTransaction(ParticipantError):
    """400: a request that must join a global transaction carried no (or a malformed)
    `Txc-Transaction` header."""

    default_code = "missing_transaction"
    default_status = 400
