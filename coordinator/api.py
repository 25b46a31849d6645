"""The public HTTP API v1 (DESIGN §4) on FastAPI.

Errors always have one shape, `{"error": {"code", "message"}}`, with the status codes of the
table in README.md. Request bodies are validated strictly (unknown fields are refused) and
capped in size before they are parsed.
"""

import asyncio
import ipaddress
import logging
import re
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coordinator import dashboard, history, logs, model
from coordinator.auth import (
    ANONYMOUS,
    Authenticator,
    AuthFailed,
    Principal,
    Role,
    TokenTable,
    parse_tokens,
)
from coordinator.engine import Carried, EngineError
from coordinator.hot_routes import HotRoute, HotRoutes
from coordinator.http_common import (
    ApiError,
    FastJSON,
    error_response,
    iso,
    txn_json,
)
from coordinator.log import LogUnavailable, NotLeader
from coordinator.model import Outcome, Transaction, TxState, Vote
from coordinator.participants import Mode
from coordinator.raft.transport import RAFT_PATH
from coordinator.raft_endpoint import RaftEndpoint
from coordinator.sign_answers import SignAnswers
from coordinator.statemachine import Status
from coordinator.store import ListFilter
from participant_sdk.signing import PARTICIPANT_HEADER, enlistment_valid

if TYPE_CHECKING:  # the node builds the app: no import at run time
    from coordinator.node import Node

TXID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_IDEMPOTENCY_KEY = 200
MAX_SIGNATURE = 128  # "e1=" and 64 hex digits (participant_sdk/signing.py)
NODE_STOP_TIMEOUT_S = 15.0  # the node's own shutdown (tasks, connections) on SIGTERM
# A request body must have arrived this long after its request started (a slowloris that
# sends a byte now and then holds a task and a connection until then, not for ever);
# the node's `body_read_timeout_s`.
BODY_READ_TIMEOUT_S = 30.0


# -- request bodies --------------------------------------------------------------------------


class BeginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout_s: float | None = Field(default=None, ge=model.MIN_TIMEOUT_S, le=model.MAX_TIMEOUT_S)
    labels: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=MAX_IDEMPOTENCY_KEY)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        return check_labels(v)


def check_labels(v: dict[str, str]) -> dict[str, str]:
    if len(v) > model.MAX_LABELS:
        raise ValueError(f"at most {model.MAX_LABELS} labels")
    for k, val in v.items():
        if not 0 < len(k) <= model.MAX_LABEL_KEY:
            raise ValueError(f"label keys are 1 to {model.MAX_LABEL_KEY} characters")
        if len(val) > model.MAX_LABEL_VALUE:
            raise ValueError(f"label values are at most {model.MAX_LABEL_VALUE} characters")
    return v


class EnlistRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=model.MAX_NAME)
    url: str = Field(min_length=1, max_length=model.MAX_URL)
    vote: Literal["yes"] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(
                "name: letters, digits, '.', '_' and '-', starting with a letter or digit"
            )
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return validate_participant_url(v)


class CarriedEnlistment(EnlistRequest):
    """An enlistment a participant handed to the client (its `Txc-Enlistment` response
    header) instead of sending it: the client brings it to the commit."""

    sig: str | None = Field(default=None, max_length=MAX_SIGNATURE)


class LazyBegin(BaseModel):
    """Begin the transaction with its commit when the coordinator does not know it yet (the
    client chose the txid and skipped `POST /v1/transactions`)."""

    model_config = ConfigDict(extra="forbid")
    timeout_s: float | None = Field(default=None, ge=model.MIN_TIMEOUT_S, le=model.MAX_TIMEOUT_S)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        return check_labels(v)


class CommitRequest(BaseModel):
    """The commit's optional body: what lets a transaction take one log round in all."""

    model_config = ConfigDict(extra="forbid")
    participants: list[CarriedEnlistment] = Field(
        default_factory=list, max_length=model.MAX_PARTICIPANTS
    )
    begin: LazyBegin | None = None

    @field_validator("participants")
    @classmethod
    def _unique(cls, v: list[CarriedEnlistment]) -> list[CarriedEnlistment]:
        names = [p.name for p in v]
        if len(set(names)) != len(names):
            raise ValueError("a participant is named twice")
        return v


def validate_participant_url(v: str) -> str:
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https"):
        raise ValueError("url must be http:// or https://")
    if not parts.hostname:
        raise ValueError("url has no host")
    if parts.query or parts.fragment:
        raise ValueError("url must not have a query or fragment")
    if parts.username or parts.password:
        raise ValueError("url must not carry credentials")
    try:
        _ = parts.port
    except ValueError as e:
        raise ValueError("url has an invalid port") from e
    host = parts.hostname
    if not re.match(r"^[A-Za-z0-9.-]+$", host):
        try:
            ipaddress.ip_address(host)
        except ValueError as e:
            raise ValueError("url has an invalid host") from e
    return v


# -- middleware: body size cap ----------------------------------------------------------------


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413 before anything parses them, and bodies
    still arriving `read_timeout_s` after the request began with 408."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, read_timeout_s: float = BODY_READ_TIMEOUT_S
    ) -> None:
        assert max_bytes > 0 and read_timeout_s > 0
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") == RAFT_PATH:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(scope, receive, send)
                    return
        # The whole body (at most max_bytes) is read here, within the deadline, and handed
        # on in one message: every answer about its size or its slowness comes from here.
        parts: list[bytes] = []
        seen = 0
        tail: Message | None = None  # a disconnect that came instead of the rest
        try:
            async with asyncio.timeout(self.read_timeout_s):
                while True:
                    msg = await receive()
                    if msg["type"] != "http.request":
                        tail = msg
                        break
                    chunk = msg.get("body", b"")
                    seen += len(chunk)
                    if seen > self.max_bytes:
                        await self._refuse(scope, receive, send)
                        return
                    parts.append(chunk)
                    if not msg.get("more_body", False):
                        break
        except TimeoutError:
            resp = error_response(
                408, "body_timeout", f"request body not received within {self.read_timeout_s:g} s"
            )
            await resp(scope, receive, send)
            return
        first: Message = {"type": "http.request", "body": b"".join(parts), "more_body": False}
        handed = False

        async def replay() -> Message:
            nonlocal handed
            if not handed:
                handed = True
                return first if tail is None else tail
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = error_response(413, "body_too_large", f"request body over {self.max_bytes} bytes")
        await resp(scope, receive, send)


class ForwardToLeader:
    """A follower sends `/v1` requests (except `/v1/cluster*`, which each node answers
    itself) to the leader and relays the answer; or answers 503 with `Txc-Leader` when it
    cannot (no leader known, or the request was already forwarded once). A plain ASGI
    middleware: every request, Raft messages included, passes through it."""

    def __init__(self, app: ASGIApp, node: "Node") -> None:
        self.app = app
        self.node = node

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        node = self.node
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if (
            node.raft is None
            or not path.startswith("/v1/")
            or path.startswith("/v1/cluster")
            or node.log.is_leader()
        ):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        leader = node.log.leader_url()
        if request.headers.get("txc-forwarded") or leader is None:
            headers = {"Txc-Leader": leader} if leader else None
            msg = "no leader elected yet" if leader is None else "not the leader"
            response: Response = error_response(503, "not_leader", msg, headers)
        else:
            response = await node.forward(request, leader)
        await response(scope, receive, send)


class RequestContext:
    """Puts the request's transaction id and W3C `traceparent` into the logging context
    (coordinator.logs); tasks started while serving the request inherit them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            logs.txid_var.set(logs.txid_from_path(scope.get("path", "")))
            tp = None
            for name, value in scope.get("headers", []):
                if name == b"traceparent":
                    tp = logs.valid_traceparent(value.decode("latin-1"))
            logs.traceparent_var.set(tp)
        await self.app(scope, receive, send)


# -- the app ----------------------------------------------------------------------------------


def create_app(node: "Node") -> FastAPI:
    """`node` is a `coordinator.node.Node` (typed loosely to avoid an import cycle)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        await node.start()
        try:
            yield
        finally:
            try:
                await asyncio.wait_for(node.stop(), NODE_STOP_TIMEOUT_S)
            except TimeoutError:
                logging.getLogger("txc.api").error(
                    "node did not stop within %s s; exiting anyway", NODE_STOP_TIMEOUT_S
                )

    app = FastAPI(
        title="txc coordinator",
        version="1",
        description="Two-phase-commit transaction coordinator. See README.md for the protocol.",
        lifespan=lifespan,
    )
    settings = node.settings
    engine = node.engine

    def answer(e: Exception) -> Response | None:
        """The API's answer to an exception of its own kinds (also used by hot_routes)."""
        if isinstance(e, ApiError):
            return error_response(e.status, e.code, e.message, e.headers, **e.extra)
        if isinstance(e, NotLeader):
            headers = {"Txc-Leader": e.leader_url} if e.leader_url else None
            return error_response(503, "not_leader", str(e), headers)
        if isinstance(e, LogUnavailable):
            return error_response(503, "unavailable", str(e), {"Retry-After": "1"})
        if isinstance(e, EngineError):
            status = {Status.NOT_FOUND: 404, Status.CONFLICT: 409, Status.INVALID: 422}.get(
                e.status, 500
            )
            extra = {"transaction": txn_json(e.txn)} if e.txn is not None else {}
            return error_response(status, e.status.value, str(e), **extra)
        return None

    async def _answer(_r: Request, e: Exception) -> Response:
        response = answer(e)
        assert response is not None
        return response

    for kind in (ApiError, NotLeader, LogUnavailable, EngineError):
        app.add_exception_handler(kind, _answer)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        if any(err.get("type") == "json_invalid" for err in errors):
            return error_response(400, "malformed_json", "request body is not valid JSON")
        details = [
            {
                "field": ".".join(str(x) for x in err.get("loc", ())[1:]),
                "problem": err.get("msg", ""),
            }
            for err in errors
        ]
        summary = "; ".join(f"{d['field'] or 'body'}: {d['problem']}" for d in details)
        return error_response(422, "invalid_request", summary, details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, e: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        return error_response(e.status_code, codes.get(e.status_code, "http_error"), str(e.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_r: Request, e: Exception) -> JSONResponse:
        node.log_unexpected(e)
        return error_response(500, "internal", "internal error; see the node's log")

    tokens = TokenTable(parse_tokens(settings.api_tokens, settings.api_token))
    registry = node.registry
    auth = Authenticator(tokens, registry)

    async def principal(request: Request) -> Principal:
        # A participant's signature covers the body: read it (Starlette keeps it for the
        # handler). A bearer call needs no body to be judged.
        signed = PARTICIPANT_HEADER.lower() in request.headers
        body = await request.body() if signed else b""
        try:
            return auth.principal(request.headers, request.method, request.url.path, body)
        except AuthFailed as e:
            raise ApiError(401, "unauthenticated", str(e), {"WWW-Authenticate": "Bearer"}) from None

    def require(*roles: Role) -> Any:
        """A dependency admitting `roles` (and admin, who may do everything)."""
        allowed = {*roles, Role.ADMIN}

        # async: FastAPI runs a plain `def` dependency in a worker thread, and that hop was
        # ~13% of the leader's CPU under `txc bench transfers` (token checks never block).
        async def dependency(request: Request) -> Principal:
            p = await principal(request)
            if p.role not in allowed:
                may = ", ".join(sorted(r.value for r in allowed))
                raise ApiError(403, "forbidden", f"role {p.role.value} may not do this ({may} may)")
            request.state.principal = p
            return p

        return Depends(dependency)

    def who(request: Request) -> Principal:
        return getattr(request.state, "principal", ANONYMOUS)

    Readers = require(Role.READ, Role.CLIENT)
    Clients = require(Role.CLIENT)
    Participants = require(Role.PARTICIPANT)
    Admins = require()

    def check_txid(txid: str) -> str:
        if not TXID_RE.match(txid):
            raise ApiError(400, "invalid_txid", "txid: 1-64 letters, digits, '.', '_', ':' or '-'")
        return txid

    async def must_get(txid: str) -> Transaction:
        t = await engine.get(check_txid(txid))
        if t is None:
            raise ApiError(404, "not_found", f"transaction {txid} not found")
        return t

    async def full_record(txid: str) -> tuple[Transaction, str]:
        """The transaction for a reader: the replicated record, or once forgotten its full
        record from this node's history (a tombstone when this node has none: it caught up
        by snapshot meanwhile). With neither, 404."""
        t = await engine.get(check_txid(txid))
        if t is not None and t.forgotten_at is None:
            return t, "state"
        await node.store.sync()  # the history row is written by the forgetting checkpoint
        kept = await history.archived(node.db, txid)
        if kept is not None and (t is None or kept.forgotten_at == t.forgotten_at):
            full = kept.txn.copy()
            full.forgotten_at = kept.forgotten_at
            return full, "history"
        if t is not None:
            return t, "tombstone"
        raise ApiError(404, "not_found", f"transaction {txid} not found")

    @app.post("/v1/transactions", status_code=201, dependencies=[Clients])
    async def begin(body: BeginRequest) -> dict[str, Any]:
        return await do_begin(None, body, ANONYMOUS)  # type: ignore[return-value]

    async def do_begin(_txid: str | None, body: BeginRequest, _p: Principal) -> Response:
        t, created = await engine.begin(body.timeout_s, body.labels, body.idempotency_key)
        return FastJSON(txn_json(t), status_code=201 if created else 200)

    @app.get("/v1/transactions", dependencies=[Readers])
    async def list_transactions(
        state: Annotated[TxState | None, Query()] = None,
        label: Annotated[str | None, Query(description="key:value", max_length=400)] = None,
        participant: Annotated[str | None, Query(max_length=model.MAX_NAME)] = None,
        min_age_s: Annotated[float | None, Query(ge=0)] = None,
        max_age_s: Annotated[float | None, Query(ge=0)] = None,
        limit: Annotated[int, Query(ge=1, le=settings.list_page_max)] = 50,
        cursor: Annotated[str | None, Query(max_length=400)] = None,
        finished: Annotated[
            bool, Query(description="list this node's history of forgotten transactions")
        ] = False,
    ) -> dict[str, Any]:
        lbl = None
        if label is not None:
            k, sep, v = label.partition(":")
            if not sep or not k:
                raise ApiError(400, "invalid_filter", "label filter is key:value")
            lbl = (k, v)
        f = ListFilter(
            state.value if state else None, lbl, participant, min_age_s, max_age_s, limit, cursor
        )
        try:
            if finished:
                await node.store.sync()
                kept, more = await history.list_page(node.db, f, time.time())
                out = []
                for a in kept:
                    d = txn_json(a.txn)
                    d["forgotten_at"] = iso(a.forgotten_at)
                    out.append(d)
                return {"items": out, "next_cursor": more, "source": "history"}
            items, next_cursor = await node.store.list_page(f, time.time())
        except ValueError as e:
            raise ApiError(400, "invalid_cursor", str(e)) from None
        return {"items": [txn_json(t) for t in items], "next_cursor": next_cursor}

    @app.get("/v1/transactions/{txid}", dependencies=[Readers])
    async def get_transaction(txid: str) -> dict[str, Any]:
        t, source = await full_record(txid)
        doc = txn_json(t)
        doc["source"] = source
        return FastJSON(doc)  # type: ignore[return-value]

    @app.get("/v1/transactions/{txid}/timeline", dependencies=[Readers])
    async def timeline(txid: str) -> dict[str, Any]:
        await full_record(txid)
        events = await node.store.history(txid)
        for ev in events:
            ev["at"] = iso(ev["at"])
        return {"txid": txid, "events": events}

    @app.post("/v1/transactions/{txid}/participants", status_code=201)
    async def enlist(
        txid: str, body: EnlistRequest, p: Annotated[Principal, Participants]
    ) -> dict[str, Any]:
        return await do_enlist(check_txid(txid), body, p)  # type: ignore[return-value]

    def enlister_refusal(p: Principal, name: str, url: str) -> ApiError | None:
        """Why `p` may not enlist `name` at `url`, or None. A registry participant enlists
        itself only, at its registered URLs; the URL rule holds for an admin too (an
        enlisted URL is where the coordinator will send signed requests)."""
        if p.participant is not None and p.participant != name:
            return ApiError(403, "wrong_participant", f"{p.participant!r} may not enlist {name!r}")
        if p.participant is None and p.role is Role.PARTICIPANT and registry.identities:
            return ApiError(
                403,
                "participant_identity_required",
                "with a participant registry a participant enlists by its own signature "
                "(Txc-Participant), not with a shared token",
            )
        refusal = registry.refusal(name, url)
        if refusal is not None:
            return ApiError(403, refusal.value, f"{name!r} is not registered at {url!r}")
        return None

    async def do_enlist(txid: str | None, body: EnlistRequest, p: Principal) -> Response:
        assert txid is not None
        refusal = enlister_refusal(p, body.name, body.url)
        if refusal is not None:
            raise refusal
        vote = Vote.YES if body.vote == "yes" else None
        t = await engine.enlist(txid, body.name, body.url, vote)
        return FastJSON(txn_json(t), status_code=201)

    @app.post("/v1/transactions/{txid}/commit", dependencies=[Clients])
    async def commit(txid: str, body: Annotated[CommitRequest | None, Body()] = None) -> Any:
        return await do_commit(check_txid(txid), body, ANONYMOUS)

    def verified(txid: str, p: CarriedEnlistment) -> ApiError | None:
        """Why this carried enlistment cannot be taken, or None."""
        if registry.mode is Mode.OPEN and tokens.enabled:
            # API tokens but no participant secret: nothing could prove that a participant
            # made it, and enlisting is the participant role's call, not a client's.
            return ApiError(
                403,
                "enlistment_unverifiable",
                "deferred enlistments need participant secrets (participants_file) "
                "on the coordinator and the participants",
            )
        refusal = registry.refusal(p.name, p.url)
        if refusal is not None:
            return ApiError(403, refusal.value, f"{p.name!r} is not registered at {p.url!r}")
        # With secrets configured, only a participant can enlist: the client must show the
        # named participant's signature. With no auth at all (development mode) nothing is
        # signed, as the protocol requests are not.
        secrets = registry.secrets(p.name)
        if secrets and not enlistment_valid(secrets, txid, p.name, p.url, p.vote, p.sig):
            return ApiError(
                403,
                "bad_enlistment_signature",
                f"the enlistment of {p.name!r} is not signed by a participant",
            )
        return None

    def carried(txid: str, body: CommitRequest, aborting: bool = False) -> Carried:
        """The commands a commit (or abort) body brings. A commit with an enlistment that
        cannot be taken is refused whole (nothing proposed); an abort goes ahead without it
        (the abort must not be lost; that participant learns it from its recovery)."""
        taken: list[CarriedEnlistment] = []
        for p in body.participants:
            refusal = verified(txid, p)
            if refusal is None:
                taken.append(p)
            elif not aborting:
                raise refusal
            else:
                logging.getLogger("txc.api").warning(
                    "abort of %s: enlistment of %s left out (%s)", txid, p.name, refusal.code
                )
        return engine.carried(
            txid,
            [(p.name, p.url, Vote.YES if p.vote == "yes" else None) for p in taken],
            (body.begin.timeout_s, body.begin.labels) if body.begin is not None else None,
        )

    async def do_commit(txid: str | None, body: CommitRequest | None, _p: Principal) -> Response:
        assert txid is not None
        t = await engine.commit(txid, carried(txid, body) if body is not None else None)
        if t.outcome is Outcome.ABORT:
            return error_response(
                409,
                "aborted",
                f"transaction aborted: {t.decision_reason or 'no reason recorded'}",
                txid=t.txid,
                outcome="abort",
                state=t.state.value,
                transaction=txn_json(t),
            )
        return FastJSON(txn_json(t))

    @app.post("/v1/transactions/{txid}/abort", dependencies=[Clients])
    async def abort(
        txid: str, request: Request, body: Annotated[CommitRequest | None, Body()] = None
    ) -> Any:
        check_txid(txid)
        # The same optional body as commit's: a lazily begun transaction's participants
        # learn the abort from phase 2 instead of from their recovery's next pass.
        t = await engine.abort(
            txid, carried=carried(txid, body, aborting=True) if body is not None else None
        )
        if who(request).role is Role.ADMIN and t.outcome is Outcome.ABORT:
            await node.audit(who(request), "abort", txid)
        if t.outcome is Outcome.COMMIT:
            return error_response(
                409,
                "committed",
                "transaction already committed",
                txid=t.txid,
                outcome="commit",
                state=t.state.value,
                transaction=txn_json(t),
            )
        return txn_json(t)

    @app.get("/v1/transactions/{txid}/outcome", dependencies=[Participants])
    async def outcome(txid: str) -> dict[str, Any]:
        o = await engine.outcome(check_txid(txid))
        return {"txid": txid, "outcome": o.value if o else "pending"}

    @app.post("/v1/transactions/{txid}/retry", dependencies=[Admins])
    async def retry(txid: str, request: Request) -> dict[str, Any]:
        t = await must_get(txid)
        if t.state not in (TxState.COMMITTING, TxState.ABORTING):
            raise ApiError(409, "conflict", f"transaction is {t.state.value}; nothing to retry")
        woke = engine.retry_now(txid)
        await node.audit(who(request), "retry", txid)
        return {"txid": txid, "retrying": woke, "state": t.state.value}

    @app.post("/v1/transactions/{txid}/heuristic/acknowledge", dependencies=[Admins])
    async def acknowledge(txid: str, request: Request) -> dict[str, Any]:
        await must_get(txid)
        t = await engine.acknowledge_heuristic(txid)
        await node.audit(who(request), "acknowledge_heuristic", txid)
        return txn_json(t)

    @app.get("/v1/audit", dependencies=[Readers])
    async def audit_trail(
        limit: Annotated[int, Query(ge=1, le=settings.list_page_max)] = 100,
        before: Annotated[int | None, Query(ge=1)] = None,
    ) -> dict[str, Any]:
        """Operators' actions, newest first (page back with `before` = the last `index`)."""
        await node.log.read_barrier()
        items = await node.store.audit_trail(limit, before)
        for it in items:
            it["at"] = iso(it["at"])
        return {"items": items}

    @app.get("/v1/cluster", dependencies=[Readers])
    async def cluster() -> dict[str, Any]:
        return node.log.status()  # type: ignore[no-any-return]

    @app.get("/v1/cluster/participants", dependencies=[Admins])
    async def participant_registry() -> dict[str, Any]:
        """This node's participant registry (names, URLs, how many secrets, a fingerprint
        to compare across nodes; never a secret) and its reloads. Each node answers for
        itself: each reads its own file."""
        watch = node.registry_watch
        out: dict[str, Any] = {"node_id": node.log.status().get("node_id"), **registry.describe()}
        if watch is not None:
            out["reload"] = {**watch.describe(), "loaded_at": iso(watch.loaded_at)}
        return out

    @app.get("/v1/cluster/retention", dependencies=[Readers])
    async def retention_state() -> dict[str, Any]:
        """This node's replicated state and history by size (counted: a soak or an operator
        reads it, not the dashboard's poll). Under /v1/cluster: each node answers for itself,
        a follower does not forward it."""
        records, tombstones = await node.store.counts()
        status = node.log.status()
        return {
            "node_id": status.get("node_id"),
            "retention_s": settings.retention_s,
            "tombstone_retention_s": settings.tombstone_retention_s,
            "history_retention_days": settings.history_retention_days,
            "records": records,
            "in_flight": len(node.store.inflight),
            "tombstones": tombstones,
            "tombstone_horizon": iso(node.store.tombstone_horizon or None),
            "history_rows": await history.count(node.db),
            "history_bytes": await history.disk_bytes(node.db),
            "snapshot_bytes": status.get("snapshot_bytes"),
            "snapshot_records": status.get("snapshot_records"),
            "forgotten_by_this_node": node.retention.forgotten,
        }

    class TransferRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        to: int = Field(ge=1)

    @app.post("/v1/cluster/transfer-leadership", dependencies=[Admins])
    async def transfer_leadership(body: TransferRequest, request: Request) -> dict[str, Any]:
        if node.raft is None:
            raise ApiError(409, "not_a_group", "this node runs standalone, without Raft")
        from coordinator.raft.errors import ConfChangeRefused
        from coordinator.raft.errors import NotLeader as CoreNotLeader

        if not node.log.is_leader():
            raise NotLeader(node.log.leader_url())
        # Recorded first: a leader in transfer takes no more proposals.
        await node.audit(who(request), "transfer_leadership", "", to=body.to)
        try:
            await node.raft.transfer_leadership(body.to)
        except CoreNotLeader:
            raise NotLeader(node.log.leader_url()) from None
        except ConfChangeRefused as e:
            raise ApiError(409, "refused", str(e)) from None
        return {"transferring_to": body.to}

    class MemberRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        id: int = Field(ge=1, le=1_000_000)
        url: str = Field(min_length=1, max_length=model.MAX_URL)

        @field_validator("url")
        @classmethod
        def _url(cls, v: str) -> str:
            return validate_participant_url(v).rstrip("/")

    def raft_or_409() -> Any:
        if node.raft is None:
            raise ApiError(409, "not_a_group", "this node runs standalone, without Raft")
        return node.raft

    async def membership(change: Any) -> None:
        from coordinator.raft.errors import ConfChangeRefused
        from coordinator.raft.errors import NotLeader as CoreNotLeader

        try:
            await change
        except (CoreNotLeader, NotLeader):
            raise NotLeader(node.log.leader_url()) from None
        except ConfChangeRefused as e:
            raise ApiError(409, "refused", str(e)) from None
        except TimeoutError:
            raise ApiError(503, "unavailable", "the change was not committed in time") from None

    @app.post("/v1/cluster/members", status_code=202, dependencies=[Admins])
    async def add_member(body: MemberRequest, request: Request) -> dict[str, Any]:
        raft = raft_or_409()
        if body.id in raft.core.status().conf.members:
            raise ApiError(409, "conflict", f"node {body.id} is already a member")
        await membership(raft.add_member(body.id, body.url))
        await node.audit(who(request), "add_member", "", id=body.id, url=body.url)
        return {
            "id": body.id,
            "url": body.url,
            "role": "learner",
            "promotion": "automatic once caught up",
        }

    @app.delete("/v1/cluster/members/{member_id}", dependencies=[Admins])
    async def remove_member(member_id: int, request: Request) -> dict[str, Any]:
        raft = raft_or_409()
        if member_id not in raft.core.status().conf.members:
            raise ApiError(404, "not_found", f"node {member_id} is not a member")
        await membership(raft.remove_member(member_id))
        await node.audit(who(request), "remove_member", "", id=member_id)
        return {"id": member_id, "removed": True}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Any:
        problems = await node.readiness_problems()
        if problems:
            return error_response(503, "not_ready", "; ".join(problems))
        return {"status": "ready"}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(
            await node.render_metrics(), media_type="text/plain; version=0.0.4"
        )

    app.include_router(dashboard.router(node))
    # Innermost: begin, enlist and commit without FastAPI's machinery (coordinator/hot_routes.py).
    app.add_middleware(
        HotRoutes,
        auth=auth,
        txid_re=TXID_RE,
        begin=HotRoute({Role.CLIENT}, BeginRequest, do_begin),
        enlist=HotRoute({Role.PARTICIPANT}, EnlistRequest, do_enlist),
        commit=HotRoute({Role.CLIENT}, CommitRequest, do_commit, body_optional=True),
        answers=answer,
    )
    app.add_middleware(ForwardToLeader, node=node)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        read_timeout_s=settings.body_read_timeout_s,
    )
    app.add_middleware(RequestContext)
    # Every answer to a participant's signed call carries the coordinator's signature.
    app.add_middleware(SignAnswers, registry=registry)
    # Outermost: Raft messages skip the API's stack (coordinator/raft_endpoint.py).
    app.add_middleware(RaftEndpoint, node=node, secret=settings.cluster_secret)
    return app
