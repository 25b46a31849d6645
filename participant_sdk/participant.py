"""FastAPI integration shared by every kind of participant (DESIGN §5 and §6).

A participant object (`PgResourceManager`, `CallbackParticipant`) gives a service:
- `router`: the three protocol endpoints (`POST {prefix}/prepare|commit|abort`) the
  coordinator calls, and `POST {prefix}/batch` (many commit/abort messages in one request,
  see `_handle_batch`), all signed by the coordinator when a participant secret is set;
- `join()`: a FastAPI dependency that joins the caller's global transaction (read from the
  `Txc-Transaction` header) for the duration of one business request (`def` endpoints);
- `join_async()`: the same for `async def` endpoints, whose blocking parts (connection,
  record check, the application's work, prepare, enlist) run in one worker-thread call;
- `install(app)`: router + error rendering + the in-doubt recovery loop in the app's lifespan.

Why the join dependency must have `scope="function"`: the participant's end-of-request steps
(prepare, record, enlist) must finish *before* the response is sent, and a failure there must
become the response (409/503). FastAPI runs the exit code of function-scoped dependencies
before sending the response and turns exceptions raised there into error responses; request-
scoped ones run after the response is already on the wire.

Why `join_async()` exists: with `join()`, FastAPI runs the dependency's entry, the endpoint
and the dependency's exit in three separate worker-thread calls (plus one more to validate a
sync endpoint's response), and each hand-off between the event loop and a worker thread
costs more CPU than the SDK's own SQL statements. `AsyncJoin.run(fn, ...)` does the whole
joined unit (the same `work()` context as `join()`) in a single `anyio.to_thread.run_sync`
call, and the async endpoint's response needs no thread at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import anyio.to_thread
import orjson
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from participant_sdk.client import ParticipantSigner, TxcClient
from participant_sdk.errors import (
    MissingTransaction,
    ParticipantError,
    TxcError,
    WorkRefused,
)
from participant_sdk.headers import (
    COORDINATOR_HEADER,
    ENLIST_DEFERRED,
    ENLIST_HEADER,
    ENLISTMENT_HEADER,
    MAX_PARTICIPANT_NAME,
    MAX_TXID,
    TRANSACTION_HEADER,
    is_valid_txid,
    validate_base_url,
    validate_participant_name,
)
from participant_sdk.recovery import (
    RECOVERY_INTERVAL_S,
    InDoubt,
    RecoveryLoop,
    RecoveryReport,
    resolve_in_doubt,
)
from participant_sdk.signing import (
    ANSWER_SIGNATURE_HEADER,
    MAX_SECRETS,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    answer_signature,
    enlistment_signature,
)
from participant_sdk.signing import verify as verify_signature

log = logging.getLogger("txc.sdk.participant")

DEFAULT_PREFIX = "/txc"
MAX_REASON = 500  # characters of a reason / error message sent back to the coordinator
MAX_PROTOCOL_BODY = 4096  # a protocol request is {"txid", "participant"}: small
# `POST {prefix}/batch`: many phase-2 messages in one request (see `_handle_batch`). The
# coordinator sends at most its `phase2_batch_max` (64 by default); a message is < 200 bytes.
MAX_BATCH_MESSAGES = 256
MAX_BATCH_BODY = 64 * 1024
# A protocol request's body must have arrived within this (the coordinator sends < 64 KiB
# at once; a caller that trickles bytes in holds a connection only this long).
PROTOCOL_READ_TIMEOUT_S = 10.0
# The participant's own calls to the coordinator (enlist during a business request, /outcome
# during recovery) use tighter bounds than the client defaults: a business request waits for
# the enlistment, and a black-holed coordinator must not pin it for minutes.
COORDINATOR_TIMEOUT_S = 5.0
COORDINATOR_RETRIES = 3


@dataclass(frozen=True)
class ProtocolReply:
    """One answer of the participant protocol: HTTP status and JSON body."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def error(cls, status: int, code: str, message: str) -> ProtocolReply:
        return cls(status, {"error": {"code": code, "message": message[:MAX_REASON]}})

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content=self.body)


class InsecureConfiguration(ValueError):
    """The participant would serve its protocol endpoints to anyone (no secret) without
    having been told that this is a development setup."""


class ProtocolRequest(BaseModel):
    txid: str = Field(min_length=1, max_length=MAX_TXID)
    participant: str = Field(min_length=1, max_length=MAX_PARTICIPANT_NAME)


class BatchMessage(BaseModel):
    action: Literal["commit", "abort"]
    txid: str = Field(min_length=1, max_length=MAX_TXID)


class BatchRequest(BaseModel):
    """The body of `POST {prefix}/batch`: phase-2 messages of one participant, each answered
    as its own `/commit` or `/abort` would be."""

    participant: str = Field(min_length=1, max_length=MAX_PARTICIPANT_NAME)
    messages: list[BatchMessage] = Field(min_length=1, max_length=MAX_BATCH_MESSAGES)


class JoinFailed(HTTPException):
    """The join dependency could not take part in the transaction. Rendered as
    `{"error": {"code", "message"}}` by `install()`'s handler (FastAPI's default handler
    renders it as `{"detail": {...}}`)."""

    def __init__(self, error: ParticipantError) -> None:
        super().__init__(
            status_code=error.status or 500,
            detail={"code": error.code, "message": error.message},
        )
        self.error = error


def _join_failed_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, JoinFailed)
    return JSONResponse(status_code=exc.status_code, content={"error": exc.detail})


W = TypeVar("W")
R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)


class AsyncJoin(Generic[W]):
    """What `join_async()` hands an `async def` endpoint: `await join.run(fn, *args)` calls
    `fn(work, *args)` inside the joined unit (`PgWork` / `CallbackWork` as with `join()`) and
    returns its result, all in one worker-thread call: open the work, the application's
    function, then prepare and enlist (or roll back when `fn` raises). Failures of the unit
    become `JoinFailed` (rendered 400/409/503 as with `join()`); `fn`'s own exceptions
    propagate after the rollback.

    One `run` per request (a participant does one unit of work per transaction). An endpoint
    that never calls `run` takes no part in the transaction: nothing is prepared or enlisted.
    """

    def __init__(
        self,
        txid: str | None,
        opener: Callable[[], AbstractContextManager[W]],
        on_success: Callable[[], None] | None = None,
    ) -> None:
        self.txid = txid  # None: a local transaction (join_async(required=False), no header)
        self._opener = opener
        self._on_success = on_success  # after the unit (e.g. the deferred enlistment header)
        self._used = False

    async def run(self, fn: Callable[..., R], *args: Any) -> R:
        if self._used:
            raise RuntimeError("AsyncJoin.run() may be called once per request")
        if inspect.iscoroutinefunction(fn):
            raise TypeError("AsyncJoin.run() takes a plain function (it runs in a thread)")
        self._used = True
        # Not cancellable (anyio's default): once the unit starts, it finishes (prepared and
        # enlisted, or rolled back) even if the caller goes away.
        return await anyio.to_thread.run_sync(self._unit, fn, args)

    def _unit(self, fn: Callable[..., R], args: tuple[Any, ...]) -> R:
        try:
            with self._opener() as work:
                result = fn(work, *args)
        except ParticipantError as e:
            raise JoinFailed(e) from e
        if self._on_success is not None:
            self._on_success()
        return result


ACCESS_LOGGER = "uvicorn.access"
# uvicorn's access-log record args: (client address, method, path, HTTP version, status).
_ACCESS_ARGS = 5


class QuietProtocolAccessLog(logging.Filter):
    """Drops the access-log lines of *successful* protocol requests under `prefix`.

    Why: the coordinator calls every participant once or more per transaction (phase 2), it
    records each call and its answer itself, and formatting and writing a log line per call
    is a measurable share of a participant's CPU. Failed protocol requests (non-2xx) and all
    business requests are still logged."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix + "/"

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or len(args) != _ACCESS_ARGS:
            return True
        path, status = args[2], args[4]
        return not (
            isinstance(path, str)
            and path.startswith(self.prefix)
            and isinstance(status, int)
            and 200 <= status < 300
        )


class ParticipantBase(ABC):
    """What every participant kind shares: identity, coordinator access, protocol router,
    join dependency plumbing and the recovery loop."""

    def __init__(
        self,
        name: str,
        *,
        public_url: str,
        coordinator_url: str | None = None,
        token: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        coordinator: TxcClient | None = None,
        recovery_interval_s: float = RECOVERY_INTERVAL_S,
        participant_token: str | Sequence[str] | None = None,
        deferred_enlistment: bool = False,
        development: bool = False,
    ) -> None:
        """`participant_token`: this participant's secret (its entry in the coordinator's
        participant registry), or a list of them during a rotation (the first signs, any
        one verifies). The coordinator signs its protocol requests with it; this
        participant signs with it its calls to the coordinator (enlist, outcome), its
        answers (votes, acknowledgements) and its deferred enlistments, and refuses
        unsigned or badly signed protocol requests.

        `token`: an API bearer token, sent on this participant's calls when no
        `participant_token` is given (the earlier setup, where that token also checks the
        coordinator's requests: one secret shared by all).

        Without any secret the protocol endpoints refuse to start (InsecureConfiguration)
        unless `development=True`: anyone who can reach them could commit or abort this
        participant's prepared work.

        `deferred_enlistment` (off by default): honour a caller's `Txc-Enlist: deferred`
        (hand the enlistment to the caller, who brings it to the commit) instead of always
        enlisting with the coordinator during the request. Off, a txid the coordinator
        never issued is refused at once (the enlist fails); on, any caller of the business
        endpoints can have work prepared under a txid it made up, held until recovery's
        next pass settles it (seconds)."""
        self.name = validate_participant_name(name)
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ValueError(f"prefix must start and not end with '/', got {prefix!r}")
        self.prefix = prefix
        self.public_url = validate_base_url(public_url)
        self.protocol_url = self.public_url + prefix
        self.token = token or None
        self.secrets = _secrets(participant_token or self.token)
        # Calls to the coordinator are signed with a participant secret given as such; with
        # only an API token they carry it as a bearer token, as before identities existed.
        self.signs_calls = bool(participant_token)
        self.development = development
        if recovery_interval_s <= 0:
            raise ValueError("recovery_interval_s must be positive")
        self.recovery_interval_s = recovery_interval_s
        # One node's URL, or several separated by commas (a Raft group): the client moves to
        # another node when one does not answer, and follows the leader. The only
        # coordinators this participant talks to: a caller's `Txc-Coordinator` never adds one.
        self.coordinator_url = _seed_list(coordinator_url) if coordinator_url else None
        self._client: TxcClient | None = coordinator
        self._client_lock = threading.Lock()
        if coordinator is not None:
            self.coordinator_url = coordinator.base_url
        self._recovery: RecoveryLoop | None = None
        self._router: APIRouter | None = None
        self.deferred_enlistment = deferred_enlistment

    @property
    def participant_token(self) -> str | None:
        """The secret this participant signs with (the first of `secrets`)."""
        return self.secrets[0] if self.secrets else None

    # -- what each participant kind implements ------------------------------------------------

    @abstractmethod
    def prepare(self, txid: str) -> ProtocolReply: ...

    @abstractmethod
    def commit(self, txid: str) -> ProtocolReply: ...

    @abstractmethod
    def abort(self, txid: str) -> ProtocolReply: ...

    def commit_many(self, txids: list[str]) -> dict[str, ProtocolReply]:
        """Commit several transactions (distinct txids) for one batch request; the answer of
        each is what `commit` gives. A kind that can share work between them overrides this
        (PgResourceManager decides them all in one statement). An exception here makes the
        batch fall back to `commit` one by one."""
        return {txid: self._handle_one("commit", txid) for txid in txids}

    @abstractmethod
    def in_doubt(self, min_age_s: float = 0.0) -> list[InDoubt]:
        """Everything recovery must look at (prepared work and records in 'prepared'); with
        `min_age_s`, a participant may leave out what was prepared more recently than that
        (in-flight work whose phase 2 is most likely on its way)."""

    @abstractmethod
    def abort_orphan(self, txid: str) -> str:
        """Roll back prepared work that was never recorded (so never enlisted); returns the
        action taken, re-checking under the txid lock."""

    @abstractmethod
    def work(
        self, txid: str, coordinator_url: str | None = None, deferred: bool = False
    ) -> AbstractContextManager[Any]:
        """Do one request's work inside global transaction `txid` (outside FastAPI too).
        `deferred`: do not enlist with the coordinator; the caller hands
        `enlistment(txid)` to the client, which brings it to the commit."""

    # Whether this kind can hand its enlistment (always with vote "yes") to the caller: only
    # a kind whose `work()` has prepared by the end of the request (PgResourceManager). A
    # signed "yes" for unprepared work would let a commit skip asking it.
    supports_deferred = False

    @abstractmethod
    def local_work(self) -> AbstractContextManager[Any]:
        """Work outside any global transaction (join(required=False) without a header)."""

    # -- coordinator access ---------------------------------------------------------------------

    def coordinator_for(self, url: str | None = None) -> TxcClient:
        """The client for this participant's configured coordinator. `url` (a caller's
        `Txc-Coordinator` header, or one stored by an earlier release) is never used: a
        caller-named host would receive this participant's calls, and recovery would take
        its word for an outcome. The client follows the group's leader among the
        configured URLs by itself."""
        if self.coordinator_url is None:
            raise MissingTransaction(
                f"{self.name}: no coordinator configured (coordinator_url); the "
                f"{COORDINATOR_HEADER} header cannot name one",
                code="no_coordinator",
            )
        with self._client_lock:
            if self._client is None:
                signer = ParticipantSigner(self.name, self.secrets) if self.signs_calls else None
                self._client = TxcClient(
                    self.coordinator_url.split(","),
                    token=None if signer else self.token,
                    timeout=COORDINATOR_TIMEOUT_S,
                    retries=COORDINATOR_RETRIES,
                    participant=signer,
                )
            return self._client

    def enlist(self, txid: str, coordinator_url: str | None, vote: str | None) -> None:
        """Enlist this participant (with `vote` "yes" when its work is already prepared).
        Raises the client's TxcError; the caller decides what it means for its prepared work
        (see `enlistment_definitely_failed`)."""
        self.coordinator_for(coordinator_url).enlist(txid, self.name, self.protocol_url, vote)

    def enlistment(self, txid: str) -> str:
        """The `Txc-Enlistment` header value of a deferred enlistment: what the client puts
        in its commit's `participants`. Signed with the participant secret when there is one
        (the coordinator then refuses an enlistment a client made up)."""
        self.check_deferred()
        entry = {"name": self.name, "url": self.protocol_url, "vote": "yes"}
        if self.participant_token:
            entry["sig"] = enlistment_signature(
                self.participant_token, txid, self.name, self.protocol_url, "yes"
            )
        return orjson.dumps(entry).decode()

    @property
    def defers(self) -> bool:
        """Whether this participant hands over its enlistment (its kind can, and
        `deferred_enlistment` is on)."""
        return self.supports_deferred and self.deferred_enlistment

    def check_deferred(self) -> None:
        """Raise unless `defers`, saying which half is missing."""
        if not self.supports_deferred:
            # e.g. a callback participant: a signed "yes" for work nobody prepared would let
            # the coordinator commit without ever asking it.
            raise WorkRefused(
                f"{type(self).__name__} does not hand over its enlistment",
                code="deferred_not_supported",
            )
        if not self.deferred_enlistment:
            raise WorkRefused(
                f"{self.name}: deferred enlistment is off (deferred_enlistment=True)",
                code="deferred_not_enabled",
            )

    def _wants_deferred(self, request: Request) -> bool:
        value = request.headers.get(ENLIST_HEADER)
        return self.defers and value is not None and value.strip().lower() == ENLIST_DEFERRED

    @staticmethod
    def enlistment_definitely_failed(e: TxcError) -> bool:
        """A 4xx answer is a decision: the coordinator did not enlist us. Anything else
        (network error, 5xx, garbled answer) leaves it unknown."""
        return e.status is not None and 400 <= e.status < 500

    # -- recovery ---------------------------------------------------------------------------------

    def resolve_in_doubt(self, dry_run: bool = False, min_age_s: float = 0.0) -> RecoveryReport:
        return resolve_in_doubt(self, dry_run=dry_run, min_age_s=min_age_s)

    def start_recovery(self) -> None:
        """Start the periodic in-doubt resolution (first pass at once)."""
        if self._recovery is None:
            self._recovery = RecoveryLoop(self, self.recovery_interval_s)
            self._recovery.start()

    def stop_recovery(self) -> None:
        if self._recovery is not None:
            self._recovery.stop()
            self._recovery = None

    def close(self) -> None:
        self.stop_recovery()
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- FastAPI --------------------------------------------------------------------------------

    @property
    def router(self) -> APIRouter:
        if self._router is None:
            self._router = self._build_router()
        return self._router

    def _refuse_unsigned(self, request: Request, body: bytes) -> JSONResponse | None:
        """Only the coordinator, which holds the participant secret, may drive the protocol."""
        if not self.secrets:
            assert self.development
            return None
        try:
            verify_signature(
                self.secrets,
                request.method,
                request.url.path,
                request.headers.get(TIMESTAMP_HEADER),
                request.headers.get(SIGNATURE_HEADER),
                body,
            )
        except SignatureError as e:
            log.warning("refused a protocol request from %s: %s", request.client, e)
            return ProtocolReply.error(e.status, e.code, str(e)).response()
        return None

    def _wrong_participant(self, name: str) -> ProtocolReply | None:
        if name == self.name:
            return None
        return ProtocolReply.error(400, "wrong_participant", f"this is {self.name!r}, not {name!r}")

    def _handle_one(self, action: str, txid: str) -> ProtocolReply:
        """One protocol message, its failures included in the answer."""
        if not is_valid_txid(txid):
            return ProtocolReply.error(400, "invalid_txid", f"malformed txid {txid!r}")
        handler: Callable[[str], ProtocolReply] = getattr(self, action)
        try:
            return handler(txid)
        except Exception as e:  # the coordinator retries; tell it why
            log.exception("%s %s of %s failed", self.name, action, txid)
            return ProtocolReply.error(503, "participant_unavailable", f"{type(e).__name__}: {e}")

    def _handle(self, action: str, req: ProtocolRequest) -> JSONResponse:
        reply = self._wrong_participant(req.participant) or self._handle_one(action, req.txid)
        return reply.response()

    def _handle_batch(self, req: BatchRequest) -> JSONResponse:
        """`POST {prefix}/batch`: 200 with one result per message, in order, each its txid,
        action, and the status and body that `/commit` or `/abort` would have answered.
        Why it exists: under load the coordinator has many transactions' phase 2 for the
        same participant at once, and one request for all of them saves a request's fixed
        cost (HTTP, signature, worker-thread hand-off) per transaction, and lets
        `commit_many` decide the commits together."""
        wrong = self._wrong_participant(req.participant)
        if wrong is not None:
            return wrong.response()
        # Decided together: the commits of txids that have no abort in this batch (the
        # coordinator never sends both; were it to, those go one by one, in order).
        aborts = {m.txid for m in req.messages if m.action == "abort"}
        commits = list(
            dict.fromkeys(
                m.txid
                for m in req.messages
                if m.action == "commit" and m.txid not in aborts and is_valid_txid(m.txid)
            )
        )
        committed: dict[str, ProtocolReply] = {}
        if commits:
            try:
                committed = self.commit_many(commits)
            except Exception:
                log.exception("%s: batched commit failed; committing one by one", self.name)
                committed = {}
        results = []
        for m in req.messages:
            reply = committed.get(m.txid) if m.action == "commit" else None
            if reply is None:
                reply = self._handle_one(m.action, m.txid)
            results.append(
                {"txid": m.txid, "action": m.action, "status": reply.status, "body": reply.body}
            )
        return JSONResponse(status_code=200, content={"results": results})

    def _signed(self, request: Request, response: JSONResponse) -> JSONResponse:
        """`response` with this participant's signature bound to the request's (a vote or
        an acknowledgement the coordinator can tell from a forged one)."""
        request_sig = request.headers.get(SIGNATURE_HEADER)
        if self.secrets and request_sig:
            response.headers[ANSWER_SIGNATURE_HEADER] = answer_signature(
                self.secrets[0], request_sig, response.status_code, bytes(response.body)
            )
        return response

    def _build_router(self) -> APIRouter:
        if not self.secrets and not self.development:
            raise InsecureConfiguration(
                f"participant {self.name!r}: refusing to serve {self.prefix}/prepare, /commit "
                "and /abort unsigned (anyone could commit or abort its prepared work): pass "
                "participant_token=<its secret in the coordinator's registry>, or "
                "development=True on a machine nobody else can reach"
            )
        router = APIRouter(prefix=self.prefix, tags=["txc"])

        async def read(request: Request, limit: int, model: type[M]) -> M | JSONResponse:
            """The body, within `limit` and PROTOCOL_READ_TIMEOUT_S, signed by the
            coordinator, and valid: or the refusal. Read piece by piece: a request announcing
            (or sending) more than `limit` is refused before the rest is buffered, and one
            that trickles in is cut off."""
            too_big = ProtocolReply.error(413, "body_too_large", "protocol body too large")
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                return too_big.response()
            parts: list[bytes] = []
            size = 0
            try:
                async with asyncio.timeout(PROTOCOL_READ_TIMEOUT_S):
                    async for chunk in request.stream():
                        size += len(chunk)
                        if size > limit:
                            return too_big.response()
                        parts.append(chunk)
            except TimeoutError:
                return ProtocolReply.error(
                    408, "body_timeout", "protocol body not received in time"
                ).response()
            except ClientDisconnect:
                return ProtocolReply.error(400, "disconnected", "client went away").response()
            body = b"".join(parts)
            refused = self._refuse_unsigned(request, body)
            if refused is not None:
                return refused
            try:
                return model.model_validate_json(body)
            except ValidationError as e:
                msg = "; ".join(str(err.get("msg", "")) for err in e.errors())[:300]
                return ProtocolReply.error(422, "invalid_request", msg).response()

        async def endpoint(action: str, request: Request) -> JSONResponse:
            req = await read(request, MAX_PROTOCOL_BODY, ProtocolRequest)
            if isinstance(req, JSONResponse):
                return self._signed(request, req)
            # The participant's handlers block on its database: run them off the event loop.
            return self._signed(request, await run_in_threadpool(self._handle, action, req))

        body_doc = {
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["txid", "participant"],
                            "properties": {
                                "txid": {"type": "string"},
                                "participant": {"type": "string"},
                            },
                        }
                    }
                }
            }
        }

        @router.post("/prepare", openapi_extra=body_doc)
        async def prepare(request: Request) -> JSONResponse:
            return await endpoint("prepare", request)

        @router.post("/commit", openapi_extra=body_doc)
        async def commit(request: Request) -> JSONResponse:
            return await endpoint("commit", request)

        @router.post("/abort", openapi_extra=body_doc)
        async def abort(request: Request) -> JSONResponse:
            return await endpoint("abort", request)

        batch_doc = {
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["participant", "messages"],
                            "properties": {
                                "participant": {"type": "string"},
                                "messages": {
                                    "type": "array",
                                    "maxItems": MAX_BATCH_MESSAGES,
                                    "items": {
                                        "type": "object",
                                        "required": ["action", "txid"],
                                        "properties": {
                                            "action": {"enum": ["commit", "abort"]},
                                            "txid": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        }
                    }
                }
            }
        }

        @router.post("/batch", openapi_extra=batch_doc)
        async def batch(request: Request) -> JSONResponse:
            req = await read(request, MAX_BATCH_BODY, BatchRequest)
            if isinstance(req, JSONResponse):
                return self._signed(request, req)
            return self._signed(request, await run_in_threadpool(self._handle_batch, req))

        return router

    def join(self, required: bool = True) -> Any:
        """FastAPI dependency (use as a parameter default) joining the caller's transaction.

        With `required=False`, a request without `Txc-Transaction` runs as a plain local
        transaction instead of failing with 400."""

        def dependency(request: Request, response: Response) -> Iterator[Any]:
            txid = request.headers.get(TRANSACTION_HEADER)
            if not txid:
                if required:
                    raise JoinFailed(
                        MissingTransaction(f"the {TRANSACTION_HEADER} header is required")
                    )
                with self.local_work() as w:
                    yield w
                return
            if not is_valid_txid(txid):
                raise JoinFailed(MissingTransaction(f"malformed {TRANSACTION_HEADER}: {txid!r}"))
            deferred = self._wants_deferred(request)
            if deferred:
                # Set now: FastAPI copies these headers into the answer before it runs this
                # dependency's exit. They reach the caller only with a successful answer (a
                # failure there becomes an error answer, built without them).
                response.headers[ENLISTMENT_HEADER] = self.enlistment(txid)
            try:
                with self.work(txid, request.headers.get(COORDINATOR_HEADER), deferred) as w:
                    yield w
            except ParticipantError as e:
                raise JoinFailed(e) from e

        try:
            return Depends(dependency, scope="function")
        except TypeError as e:  # FastAPI < 0.121 has no dependency scopes
            raise RuntimeError(
                "participant_sdk's join() needs FastAPI >= 0.121 (Depends(scope='function'))"
            ) from e

    def join_async(self, required: bool = True) -> Any:
        """FastAPI dependency for `async def` endpoints: an `AsyncJoin` whose `run(fn, ...)`
        does the joined unit in one worker-thread call (see `AsyncJoin`). Header checks as in
        `join()`; they run on the event loop and touch no database.

            @app.post("/transfer/debit")
            async def debit(body: Movement, join: AsyncJoin[PgWork] = rm.join_async()):
                return await join.run(move, body.account, -body.amount)
        """

        async def dependency(request: Request, response: Response) -> AsyncJoin[Any]:
            # `async def`: FastAPI calls it on the event loop, without a worker thread.
            txid = request.headers.get(TRANSACTION_HEADER)
            if not txid:
                if required:
                    raise JoinFailed(
                        MissingTransaction(f"the {TRANSACTION_HEADER} header is required")
                    )
                return AsyncJoin(None, self.local_work)
            if not is_valid_txid(txid):
                raise JoinFailed(MissingTransaction(f"malformed {TRANSACTION_HEADER}: {txid!r}"))
            coordinator_url = request.headers.get(COORDINATOR_HEADER)
            if not self._wants_deferred(request):
                return AsyncJoin(txid, lambda: self.work(txid, coordinator_url))

            def hand_over() -> None:
                response.headers[ENLISTMENT_HEADER] = self.enlistment(txid)

            return AsyncJoin(txid, lambda: self.work(txid, coordinator_url, True), hand_over)

        return Depends(dependency)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI | None = None) -> AsyncIterator[None]:
        """Runs the recovery loop while the app runs; usable as `FastAPI(lifespan=...)`."""
        self.start_recovery()
        try:
            yield
        finally:
            self.close()

    def quiet_protocol_access_log(self, logger_name: str = ACCESS_LOGGER) -> None:
        """Opt-in: stop uvicorn from logging successful protocol requests (see
        `QuietProtocolAccessLog`). Idempotent."""
        logger = logging.getLogger(logger_name)
        if not any(
            isinstance(f, QuietProtocolAccessLog) and f.prefix == self.prefix + "/"
            for f in logger.filters
        ):
            logger.addFilter(QuietProtocolAccessLog(self.prefix))

    def install(self, app: FastAPI, *, recovery: bool = True) -> None:
        """Mount the protocol router, render join failures as `{"error": ...}`, and (unless
        `recovery=False`) run the recovery loop during the app's lifespan."""
        app.include_router(self.router)
        app.add_exception_handler(JoinFailed, _join_failed_handler)
        if not recovery:
            return
        inner = app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def lifespan(a: Any) -> AsyncIterator[Any]:
            async with inner(a) as state, self.lifespan(a):
                yield state

        app.router.lifespan_context = lifespan


def _secrets(given: str | Sequence[str] | None) -> tuple[str, ...]:
    if given is None or given == "":
        return ()
    out = (given,) if isinstance(given, str) else tuple(given)
    if not 1 <= len(out) <= MAX_SECRETS or not all(isinstance(s, str) and s for s in out):
        raise ValueError(f"participant_token: a secret, or a list of 1 to {MAX_SECRETS} of them")
    return out


def _seed_list(urls: str) -> str:
    """Validate "url" or "url1,url2,..." and return it normalised (comma-joined)."""
    seeds = [validate_base_url(u.strip()) for u in urls.split(",") if u.strip()]
    if not seeds:
        raise ValueError("a coordinator URL is required")
    return ",".join(seeds)
