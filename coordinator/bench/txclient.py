"""The load generator's HTTP clients.

The bench's default coordinator client is a lean one on aiohttp, written from the API
(DESIGN §4): begin with an idempotency key, commit, abort; it follows `Txc-Leader` on 503,
moves to another node when one does not answer, and retries within a bounded time (every
call it makes is idempotent). Why not the SDK's `AsyncTxcClient` by default: it runs on
plain httpx, which measured ~20x slower than aiohttp at 32 concurrent requests on this
machine (DESIGN §9); in a closed loop on the same two cores, that client cost would be
charged to the coordinator. `--client sdk` measures through the SDK instead.

The business calls (debit, credit) use the same aiohttp session in every scenario.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from participant_sdk.headers import propagation_headers

RETRY_FOR_S = 30.0  # a call that found no leader for this long fails
RETRY_PAUSE_S = 0.02
REQUEST_TIMEOUT_S = 30.0  # one HTTP request (a commit waits up to 2 s for phase 2)
TX_TIMEOUT_S = 30.0  # the global transaction's timeout at the coordinator
MAX_LEADER_HOPS = 5
BEGIN = {"timeout_s": TX_TIMEOUT_S, "labels": {"kind": "bench"}}  # either kind of begin


class TxFailed(Exception):
    """The coordinator answered with an error or could not be reached in time."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass
class Tx:
    """One transfer's transaction as the load generator holds it. `lazy`: begun by its commit,
    with the participants' deferred enlistments (their `Txc-Enlistment` answers) brought
    along (README "Lazy transactions")."""

    txid: str
    headers: dict[str, str]
    lazy: bool = False
    enlistments: list[dict[str, Any]] = field(default_factory=list)

    def collect(self, header: str | None) -> None:
        if self.lazy and header:
            self.enlistments.append(json.loads(header))

    def body(self) -> dict[str, Any] | None:
        if not self.lazy:
            return None
        return {"participants": self.enlistments, "begin": BEGIN}


def lazy_tx(coordinator_url: str) -> Tx:
    txid = str(uuid.uuid4())
    return Tx(txid, propagation_headers(txid, coordinator_url, deferred=True), lazy=True)


class Coordinator(Protocol):
    async def begin(self, lazy: bool = False) -> Tx:
        """Begin (lazy: no call, see `Tx`); the headers go to participants."""
        ...

    async def commit(self, tx: Tx) -> None:
        """Raises TxFailed unless the outcome is COMMIT."""
        ...

    async def abort(self, tx: Tx) -> None: ...

    async def aclose(self) -> None: ...


class AiohttpCoordinator:
    def __init__(self, session: aiohttp.ClientSession, urls: list[str], token: str | None):
        assert urls
        self.session = session
        self.urls = list(urls)
        self.current = self.urls[0]
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        deadline = time.monotonic() + RETRY_FOR_S
        hops = 0
        i = self.urls.index(self.current) if self.current in self.urls else 0
        while True:
            base = self.current
            try:
                async with self.session.request(
                    method, base + path, json=body, headers=self.headers, timeout=self.timeout
                ) as r:
                    data = await r.json(content_type=None)
                    leader = r.headers.get("Txc-Leader")
                    status = r.status
                if status != 503 and status < 500:
                    if leader and leader.rstrip("/") != base and leader.rstrip("/") in self.urls:
                        # A follower forwarded this call: go to the leader directly next time.
                        self.current = leader.rstrip("/")
                    return status, data
                if status == 503 and leader and leader != base and hops < MAX_LEADER_HOPS:
                    hops += 1
                    self.current = leader.rstrip("/")
                    continue
            except (aiohttp.ClientError, TimeoutError, ValueError):
                i += 1
                self.current = self.urls[i % len(self.urls)]
            if time.monotonic() > deadline:
                raise TxFailed(f"{path.rsplit('/', 1)[-1] or 'begin'}: no leader")
            await asyncio.sleep(RETRY_PAUSE_S)

    async def begin(self, lazy: bool = False) -> Tx:
        if lazy:
            return lazy_tx(self.current)
        body = {**BEGIN, "idempotency_key": uuid.uuid4().hex}
        status, data = await self._call("POST", "/v1/transactions", body)
        if status not in (200, 201):
            raise TxFailed(f"begin: HTTP {status}")
        txid = str(data["txid"])
        return Tx(txid, propagation_headers(txid, self.current))

    async def commit(self, tx: Tx) -> None:
        status, data = await self._call("POST", f"/v1/transactions/{tx.txid}/commit", tx.body())
        if status != 200:
            code = (data.get("error") or {}).get("code") if isinstance(data, dict) else None
            raise TxFailed(f"commit: HTTP {status} {code or ''}".strip())

    async def abort(self, tx: Tx) -> None:
        await self._call("POST", f"/v1/transactions/{tx.txid}/abort", tx.body())

    async def aclose(self) -> None:
        pass  # the session belongs to the caller


class SdkCoordinator:
    """The same calls through `participant_sdk.AsyncTxcClient` (httpx)."""

    def __init__(self, urls: list[str], token: str | None) -> None:
        from participant_sdk import AsyncTxcClient

        self.client = AsyncTxcClient(urls, token=token, timeout=REQUEST_TIMEOUT_S)

    async def begin(self, lazy: bool = False) -> Tx:
        from participant_sdk import TxcError

        if lazy:
            return lazy_tx(self.client.base_url)
        try:
            tx = await self.client.begin(timeout_s=TX_TIMEOUT_S, labels={"kind": "bench"})
        except TxcError as e:
            raise TxFailed(f"begin: {type(e).__name__}") from e
        return Tx(tx.txid, tx.headers)

    async def commit(self, tx: Tx) -> None:
        from participant_sdk import TxcError

        body = tx.body() or {}
        try:
            await self.client.commit(tx.txid, body.get("participants"), body.get("begin"))
        except TxcError as e:
            raise TxFailed(f"commit: {type(e).__name__}") from e

    async def abort(self, tx: Tx) -> None:
        from participant_sdk import TxcError

        body = tx.body() or {}
        try:
            await self.client.abort(tx.txid, body.get("participants"), body.get("begin"))
        except TxcError:
            pass

    async def aclose(self) -> None:
        await self.client.aclose()
