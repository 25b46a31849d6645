"""Coordinator client (sync `TxcClient` on `http_pool`, async `AsyncTxcClient` on httpx).

Why it retries the way it does:
- Every call it makes is safe to repeat (DESIGN §3 rule 7): commit/abort/enlist/get/outcome
  are idempotent on the coordinator, and `begin` always carries an idempotency key (one is
  generated per `begin` call when the caller gives none), so a retried begin after a lost
  answer returns the same transaction instead of creating a second one.
- Retried conditions: connection errors and timeouts, 5xx answers, and 503 "no leader".
  A 503 carrying `Txc-Leader` is followed at once (the leader's address becomes sticky);
  other retries wait a capped exponential backoff with jitter (tenacity).
- Several base URLs may be given (the coordinator group's nodes): a connection error moves
  to the next one, so losing the node we talk to does not lose the client.
- 4xx answers are never retried: they are decisions (409 aborted, 404 unknown, 401 auth).

Why the sync client has its own HTTP layer (`http_pool.HttpPool`, keep-alive connections on
`http.client`): participants call it synchronously inside every business request (the
enlist), where httpx's per-request overhead was a tenth of a demo bank's CPU. httpx is still
used when the caller passes a `transport`, or when the environment configures an HTTP proxy
(httpx speaks to proxies; the pool does not).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
)

from participant_sdk.errors import (
    AuthenticationFailed,
    CoordinatorUnavailable,
    InvalidRequest,
    TransactionAborted,
    TransactionAlreadyCommitted,
    TransactionConflict,
    TransactionNotFound,
    TxcError,
)
from participant_sdk.headers import (
    ENLISTMENT_HEADER,
    LEADER_HEADER,
    propagation_headers,
    validate_base_url,
    validate_participant_name,
    validate_txid,
)
from participant_sdk.http_pool import HttpAnswer, HttpPool, HttpTransportError
from participant_sdk.signing import (
    ANSWER_SIGNATURE_HEADER,
    SIGNATURE_HEADER,
    answer_valid,
    participant_headers,
)

log = logging.getLogger("txc.sdk.client")

DEFAULT_TIMEOUT_S = 30.0  # per HTTP request; a commit runs a whole 2PC round before answering
DEFAULT_RETRIES = 6  # retries after the first attempt for network errors / 5xx / no leader
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 2.0
BACKOFF_JITTER_S = 0.05
MAX_LEADER_REDIRECTS = 5  # immediate (no backoff) Txc-Leader hops per call, against loops
MAX_ERROR_MESSAGE = 500  # characters of a server's error message kept in exceptions

OUTCOMES = ("commit", "abort", "pending")


# -- retry plumbing --------------------------------------------------------------------------


class _Retryable(CoordinatorUnavailable):
    """An attempt failed in a way that another attempt may fix. Raised to the caller (as a
    CoordinatorUnavailable) when the retry budget is spent."""


class _LeaderRedirect(_Retryable):
    """503 with the leader's address: retry there without waiting."""


@dataclass
class _Endpoints:
    """The coordinator nodes this client knows, and which one it currently talks to."""

    seeds: list[str]
    index: int = 0
    leader: str | None = None

    def current(self) -> str:
        return self.leader or self.seeds[self.index]

    def follow(self, leader: str) -> None:
        self.leader = leader

    def is_seed(self, url: str) -> bool:
        return url in self.seeds

    def failed(self, url: str) -> None:
        """`url` did not answer: forget it as leader, move to the next seed."""
        if self.leader == url:
            self.leader = None
        elif self.seeds[self.index] == url:
            self.index = (self.index + 1) % len(self.seeds)


@dataclass
class _RetryPolicy:
    """Per-call retry budget: `retries` failures (backed off), plus up to
    MAX_LEADER_REDIRECTS immediate hops to an announced leader."""

    retries: int
    redirects: int = 0
    failures: int = 0
    _seen_attempt: int = 0
    _immediate: bool = False

    def _classify(self, state: RetryCallState) -> None:
        """Count the attempt that just failed, once (tenacity calls wait and stop for it)."""
        if state.attempt_number == self._seen_attempt:
            return
        self._seen_attempt = state.attempt_number
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _LeaderRedirect) and self.redirects < MAX_LEADER_REDIRECTS:
            self.redirects += 1
            self._immediate = True
        else:
            self.failures += 1
            self._immediate = False

    def stop(self, state: RetryCallState) -> bool:
        self._classify(state)
        return not self._immediate and self.failures > self.retries

    def wait(self, state: RetryCallState) -> float:
        self._classify(state)
        if self._immediate:
            return 0.0
        # Capped exponential backoff with jitter; the exponent counts real failures only, so
        # leader hops do not inflate it.
        base = BACKOFF_INITIAL_S * 2.0 ** max(self.failures - 1, 0)
        return min(base, BACKOFF_MAX_S) + random.uniform(0.0, BACKOFF_JITTER_S)


# -- request description and answer interpretation (shared by sync and async) ----------------


@dataclass(frozen=True)
class _Call:
    op: str  # begin | get | commit | abort | outcome | enlist
    method: str
    path: str
    body: dict[str, Any] | None = None


_Answer = httpx.Response | HttpAnswer


def _error_fields(resp: _Answer) -> tuple[str | None, str, dict[str, Any]]:
    try:
        body = resp.json()
    except ValueError:
        return None, resp.text[:MAX_ERROR_MESSAGE], {}
    if not isinstance(body, dict):
        return None, str(body)[:MAX_ERROR_MESSAGE], {}
    err = body.get("error")
    if isinstance(err, dict):
        code = err.get("code")
        msg = str(err.get("message", ""))[:MAX_ERROR_MESSAGE]
        return (str(code) if code is not None else None), msg, body
    detail = body.get("detail")
    return None, str(detail if detail is not None else body)[:MAX_ERROR_MESSAGE], body


def _leader_in(resp: _Answer) -> str | None:
    leader = resp.headers.get(LEADER_HEADER)
    if not leader:
        return None
    try:
        return validate_base_url(leader)
    except ValueError:
        return None


def _interpret(call: _Call, resp: _Answer, endpoints: _Endpoints) -> dict[str, Any]:
    status = resp.status_code
    if status != 503:
        # A follower answered by forwarding to the leader and said where it is: go there
        # directly next time (a forwarded call costs the group a second HTTP exchange). Only
        # to a node this client was configured with: the group's own addresses may not be
        # reachable from here (containers, NAT), and forwarding works anyway.
        leader_url = _leader_in(resp)
        if leader_url and leader_url != endpoints.current() and endpoints.is_seed(leader_url):
            endpoints.follow(leader_url)
    if 200 <= status < 300:
        try:
            data = resp.json()
        except ValueError as e:
            raise TxcError(
                f"{call.op}: answer is not JSON", code="bad_response", status=status
            ) from e
        if not isinstance(data, dict):
            raise TxcError(f"{call.op}: answer is not an object", code="bad_response")
        if call.op == "commit" and data.get("outcome") == "abort":
            raise TransactionAborted("transaction aborted", status=status, body=data)
        return data
    code, message, body = _error_fields(resp)
    kw: dict[str, Any] = {"code": code, "status": status, "body": body}
    if status == 503:
        leader_url = _leader_in(resp)
        if leader_url and leader_url != endpoints.current():
            endpoints.follow(leader_url)
            raise _LeaderRedirect(f"{call.op}: not the leader; following {leader_url}", **kw)
        raise _Retryable(f"{call.op}: coordinator not ready: {message}", **kw)
    if status >= 500:
        raise _Retryable(f"{call.op}: coordinator error: {message}", **kw)
    if status == 409:
        if call.op == "commit":
            raise TransactionAborted(message or "transaction aborted", **kw)
        if call.op == "abort":
            raise TransactionAlreadyCommitted(message or "transaction already committed", **kw)
        raise TransactionConflict(message, **kw)
    if status == 404:
        raise TransactionNotFound(message, **kw)
    if status in (401, 403):
        raise AuthenticationFailed(message, **kw)
    if status in (400, 422):
        raise InvalidRequest(message, **kw)
    raise TxcError(f"{call.op}: unexpected HTTP {status}: {message}", **kw)


def _begin_call(
    timeout_s: float | None, labels: dict[str, str] | None, idempotency_key: str | None
) -> _Call:
    body: dict[str, Any] = {"idempotency_key": idempotency_key or uuid.uuid4().hex}
    if timeout_s is not None:
        body["timeout_s"] = float(timeout_s)
    if labels:
        body["labels"] = dict(labels)
    return _Call("begin", "POST", "/v1/transactions", body)


def _tx_call(op: str, method: str, txid: str, suffix: str = "") -> _Call:
    return _Call(op, method, f"/v1/transactions/{validate_txid(txid)}{suffix}")


def _decision_call(
    op: str,
    txid: str,
    participants: Sequence[dict[str, Any]] | None,
    begin: dict[str, Any] | None,
) -> _Call:
    """commit or abort; with a body when the client brings enlistments or a lazy begin."""
    body: dict[str, Any] | None = None
    if participants or begin is not None:
        body = {"participants": list(participants or [])}
        if begin is not None:
            body["begin"] = begin
    return _Call(op, "POST", f"/v1/transactions/{validate_txid(txid)}/{op}", body)


def _lazy_begin_body(timeout_s: float | None, labels: dict[str, str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if timeout_s is not None:
        body["timeout_s"] = float(timeout_s)
    if labels:
        body["labels"] = dict(labels)
    return body


def _enlist_call(txid: str, name: str, url: str, vote: str | None) -> _Call:
    body: dict[str, Any] = {"name": name, "url": url}
    if vote is not None:
        body["vote"] = vote
    return _Call("enlist", "POST", f"/v1/transactions/{validate_txid(txid)}/participants", body)


def _outcome_of(data: dict[str, Any]) -> str:
    outcome = data.get("outcome")
    if outcome not in OUTCOMES:
        message = f"outcome: unexpected answer {data!r}"[:MAX_ERROR_MESSAGE]
        raise TxcError(message, code="bad_response")
    return str(outcome)


def _seeds(base_url: str | Sequence[str]) -> list[str]:
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    if not urls:
        raise ValueError("at least one coordinator base URL is required")
    return [validate_base_url(u) for u in urls]


# -- transaction handles -----------------------------------------------------------------------


@dataclass
class _TransactionBase:
    txid: str
    coordinator_url: str
    data: dict[str, Any] = field(default_factory=dict)
    outcome: str | None = None  # set once this handle committed or aborted
    # A lazy transaction (`begin_lazy`): begun by its commit, its participants' enlistments
    # collected from their answers and brought along (one coordinator call in all).
    lazy_begin: dict[str, Any] | None = None
    enlistments: list[dict[str, Any]] = field(default_factory=list)

    @property
    def expires_at(self) -> str | None:
        value = self.data.get("expires_at")
        return str(value) if value is not None else None

    @property
    def headers(self) -> dict[str, str]:
        """Pass these on every call to a participant that should join the transaction."""
        return propagation_headers(
            self.txid, self.coordinator_url, deferred=self.lazy_begin is not None
        )

    def collect(self, response: Any) -> None:
        """Keep the enlistment a participant handed over in its answer (`response`: any
        HTTP response with `.headers`: httpx, requests, aiohttp). Call it for every
        successful participant call of a lazy transaction. One left out is not lost: that
        participant's prepared work follows the outcome when its recovery asks (seconds
        later, holding its locks until then)."""
        value = response.headers.get(ENLISTMENT_HEADER)
        if not value:
            return
        try:
            entry = json.loads(value)
        except ValueError:
            entry = None
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InvalidRequest(
                f"malformed {ENLISTMENT_HEADER} header from a participant", code="bad_enlistment"
            )
        self.enlistments = [e for e in self.enlistments if e.get("name") != entry["name"]]
        self.enlistments.append(entry)


@dataclass
class Transaction(_TransactionBase):
    client: TxcClient | None = None

    def commit(self) -> dict[str, Any]:
        assert self.client is not None
        try:
            result = self.client.commit(self.txid, self.enlistments, self.lazy_begin)
        except TransactionAborted:
            self.outcome = "abort"
            raise
        self.outcome = "commit"
        return result

    def abort(self) -> dict[str, Any]:
        assert self.client is not None
        result = self.client.abort(self.txid, self.enlistments, self.lazy_begin)
        self.outcome = "abort"
        return result


@dataclass
class AsyncTransaction(_TransactionBase):
    client: AsyncTxcClient | None = None

    async def commit(self) -> dict[str, Any]:
        assert self.client is not None
        try:
            result = await self.client.commit(self.txid, self.enlistments, self.lazy_begin)
        except TransactionAborted:
            self.outcome = "abort"
            raise
        self.outcome = "commit"
        return result

    async def abort(self) -> dict[str, Any]:
        assert self.client is not None
        result = await self.client.abort(self.txid, self.enlistments, self.lazy_begin)
        self.outcome = "abort"
        return result


# -- clients -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParticipantSigner:
    """A participant's identity for its own calls (enlist, outcome): its name and secrets
    (the first signs; any one verifies the coordinator's answers, for rotation)."""

    name: str
    secrets: tuple[str, ...]

    def __post_init__(self) -> None:
        validate_participant_name(self.name)
        if not self.secrets or not all(self.secrets):
            raise ValueError("a participant signer needs at least one non-empty secret")

    def headers(self, method: str, url: str, body: bytes) -> dict[str, str]:
        return participant_headers(self.name, self.secrets[0], method, url, body)

    def check(self, sent: dict[str, str], resp: _Answer, call: _Call) -> None:
        """Raise (retryable: as if no answer came) unless the coordinator signed this answer
        to this call. Why retryable rather than an error: an answer nobody can vouch for is
        no answer, and anything taken from it (an outcome, a failed enlistment) could be a
        forger's."""
        given = resp.headers.get(ANSWER_SIGNATURE_HEADER)
        if not answer_valid(
            self.secrets, sent[SIGNATURE_HEADER], resp.status_code, resp.content, given
        ):
            # An unsigned 401 is also what a real coordinator answers when this
            # participant's secret is not the one its registry holds: say so, as a hint.
            hint = (
                "; is participant_token the secret the coordinator's registry holds?"
                if resp.status_code == 401
                else ""
            )
            raise _Retryable(
                f"{call.op}: answer not signed by the coordinator (HTTP {resp.status_code})" + hint,
                code="unsigned_answer",
                # No status: nothing may be concluded from it (a forged 4xx must not read
                # as "the coordinator refused this enlistment").
            )


class _ClientBase:
    def __init__(
        self,
        base_url: str | Sequence[str],
        token: str | None,
        timeout: float,
        retries: int,
        participant: ParticipantSigner | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self._endpoints = _Endpoints(_seeds(base_url))
        self.token = token
        self.timeout = timeout
        self.retries = retries
        # A participant's client signs each call, and takes only signed answers.
        self.participant = participant

    def _prepared(self, call: _Call, url: str) -> tuple[bytes | None, dict[str, str]]:
        """The exact body bytes and headers of one attempt (a signature covers the bytes)."""
        body = None if call.body is None else json.dumps(call.body).encode()
        headers = self._headers()
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.participant is not None:
            headers |= self.participant.headers(call.method, url, body or b"")
        return body, headers

    @property
    def base_url(self) -> str:
        """The node this client currently talks to (the leader once one answered)."""
        return self._endpoints.current()

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _policy(self) -> _RetryPolicy:
        return _RetryPolicy(self.retries)


def _env_proxies() -> bool:
    """Whether the environment configures an HTTP(S) proxy (HTTP_PROXY, HTTPS_PROXY, ...)."""
    proxies = urllib.request.getproxies()
    return any(proxies.get(k) for k in ("http", "https", "all"))


class TxcClient(_ClientBase):
    """Synchronous coordinator client. Thread-safe for concurrent calls (its HTTP pool is)."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        *,
        transport: httpx.BaseTransport | None = None,
        participant: ParticipantSigner | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout, retries, participant)
        self._http: httpx.Client | None = None
        self._pool: HttpPool | None = None
        if transport is not None or _env_proxies():
            self._http = httpx.Client(timeout=timeout, transport=transport)
        else:
            self._pool = HttpPool(timeout)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        if self._pool is not None:
            self._pool.close()

    def _send(self, call: _Call, url: str) -> _Answer:
        body, headers = self._prepared(call, url)
        if self._pool is None:
            assert self._http is not None
            resp: _Answer = self._http.request(call.method, url, content=body, headers=headers)
        else:
            resp = self._pool.request(call.method, url, body, headers)
        if self.participant is not None:
            self.participant.check(headers, resp, call)
        return resp

    def __enter__(self) -> TxcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, call: _Call) -> dict[str, Any]:
        policy = self._policy()
        retrying = Retrying(
            stop=policy.stop,
            wait=policy.wait,
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                base = self._endpoints.current()
                try:
                    resp = self._send(call, base + call.path)
                except (httpx.TransportError, HttpTransportError) as e:
                    self._endpoints.failed(base)
                    raise _Retryable(f"{call.op}: {base}: {type(e).__name__}: {e}") from e
                return _interpret(call, resp, self._endpoints)
        raise AssertionError("unreachable: tenacity either returns or raises")

    def begin(
        self,
        timeout_s: float | None = None,
        labels: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Transaction:
        """Start a global transaction. Retried safely: see the module docstring."""
        data = self._request(_begin_call(timeout_s, labels, idempotency_key))
        txid = validate_txid(str(data.get("txid")))
        return Transaction(txid=txid, coordinator_url=self.base_url, data=data, client=self)

    def get(self, txid: str) -> dict[str, Any]:
        return self._request(_tx_call("get", "GET", txid))

    def begin_lazy(
        self, timeout_s: float | None = None, labels: dict[str, str] | None = None
    ) -> Transaction:
        """A transaction the coordinator learns of only at its commit (or abort): no call
        now. Its headers ask participants to hand over their enlistment (`Txc-Enlist:
        deferred`); pass each participant's answer to `tx.collect()`. Every participant
        must offer deferred enlistment (the SDK's PostgreSQL one does). Trade-offs: see
        README "Lazy transactions"."""
        return Transaction(
            txid=str(uuid.uuid4()),
            coordinator_url=self.base_url,
            client=self,
            lazy_begin=_lazy_begin_body(timeout_s, labels),
        )

    def commit(
        self,
        txid: str,
        participants: Sequence[dict[str, Any]] | None = None,
        begin: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run 2PC. Returns the answer on COMMIT; raises TransactionAborted on ABORT and
        CoordinatorUnavailable when the outcome could not be learned (it may still commit).
        `participants` (deferred enlistments) and `begin` (a lazy begin's timeout_s and
        labels) go in the same log round as the decision."""
        return self._request(_decision_call("commit", txid, participants, begin))

    def abort(
        self,
        txid: str,
        participants: Sequence[dict[str, Any]] | None = None,
        begin: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Abort; raises TransactionAlreadyCommitted when the outcome is COMMIT."""
        return self._request(_decision_call("abort", txid, participants, begin))

    def outcome(self, txid: str) -> str:
        """ "commit", "abort" or "pending" (an unknown txid becomes a durable "abort")."""
        return _outcome_of(self._request(_tx_call("outcome", "GET", txid, "/outcome")))

    def enlist(self, txid: str, name: str, url: str, vote: str | None = None) -> dict[str, Any]:
        """Enlist participant `name` reachable at protocol base `url` (participant side)."""
        return self._request(_enlist_call(txid, name, url, vote))

    @contextlib.contextmanager
    def transaction(
        self,
        timeout_s: float | None = None,
        labels: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        lazy: bool = False,
    ) -> Iterator[Transaction]:
        """Begin; commit when the block ends normally (unless the block already committed or
        aborted through the handle); abort when it raises, then re-raise. `lazy`: see
        `begin_lazy` (no idempotency key: the txid itself is the client's)."""
        if lazy and idempotency_key is not None:
            raise ValueError("a lazy transaction takes no idempotency key (its txid is one)")
        tx = (
            self.begin_lazy(timeout_s=timeout_s, labels=labels)
            if lazy
            else self.begin(timeout_s=timeout_s, labels=labels, idempotency_key=idempotency_key)
        )
        try:
            yield tx
        except BaseException:
            if tx.outcome is None:
                try:
                    tx.abort()
                except TxcError as e:  # the original exception matters more
                    log.warning("abort of %s after an exception failed: %s", tx.txid, e)
            raise
        if tx.outcome is None:
            tx.commit()


class AsyncTxcClient(_ClientBase):
    """Asynchronous coordinator client (same semantics as TxcClient)."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        participant: ParticipantSigner | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout, retries, participant)
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncTxcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(self, call: _Call) -> dict[str, Any]:
        policy = self._policy()
        retrying = AsyncRetrying(
            stop=policy.stop,
            wait=policy.wait,
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                base = self._endpoints.current()
                url = base + call.path
                body, headers = self._prepared(call, url)
                try:
                    resp = await self._http.request(call.method, url, content=body, headers=headers)
                except httpx.TransportError as e:
                    self._endpoints.failed(base)
                    raise _Retryable(f"{call.op}: {base}: {type(e).__name__}: {e}") from e
                if self.participant is not None:
                    self.participant.check(headers, resp, call)
                return _interpret(call, resp, self._endpoints)
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def begin(
        self,
        timeout_s: float | None = None,
        labels: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncTransaction:
        data = await self._request(_begin_call(timeout_s, labels, idempotency_key))
        txid = validate_txid(str(data.get("txid")))
        return AsyncTransaction(txid=txid, coordinator_url=self.base_url, data=data, client=self)

    async def get(self, txid: str) -> dict[str, Any]:
        return await self._request(_tx_call("get", "GET", txid))

    def begin_lazy(
        self, timeout_s: float | None = None, labels: dict[str, str] | None = None
    ) -> AsyncTransaction:
        """See `TxcClient.begin_lazy` (no coordinator call: not a coroutine)."""
        return AsyncTransaction(
            txid=str(uuid.uuid4()),
            coordinator_url=self.base_url,
            client=self,
            lazy_begin=_lazy_begin_body(timeout_s, labels),
        )

    async def commit(
        self,
        txid: str,
        participants: Sequence[dict[str, Any]] | None = None,
        begin: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return await self._request(_decision_call("commit", txid, participants, begin))

    async def abort(
        self,
        txid: str,
        participants: Sequence[dict[str, Any]] | None = None,
        begin: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return await self._request(_decision_call("abort", txid, participants, begin))

    async def outcome(self, txid: str) -> str:
        return _outcome_of(await self._request(_tx_call("outcome", "GET", txid, "/outcome")))

    async def enlist(
        self, txid: str, name: str, url: str, vote: str | None = None
    ) -> dict[str, Any]:
        return await self._request(_enlist_call(txid, name, url, vote))

    @contextlib.asynccontextmanager
    async def transaction(
        self,
        timeout_s: float | None = None,
        labels: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        lazy: bool = False,
    ) -> AsyncIterator[AsyncTransaction]:
        if lazy and idempotency_key is not None:
            raise ValueError("a lazy transaction takes no idempotency key (its txid is one)")
        tx = (
            self.begin_lazy(timeout_s=timeout_s, labels=labels)
            if lazy
            else await self.begin(
                timeout_s=timeout_s, labels=labels, idempotency_key=idempotency_key
            )
        )
        try:
            yield tx
        except BaseException:
            if tx.outcome is None:
                try:
                    await tx.abort()
                except TxcError as e:
                    log.warning("abort of %s after an exception failed: %s", tx.txid, e)
            raise
        if tx.outcome is None:
            await tx.commit()
