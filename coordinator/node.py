"""One coordinator node: storage, log, engine and the HTTP API, wired together."""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from coordinator import migrate, participants, tracing
from coordinator.api import create_app
from coordinator.auth import Principal
from coordinator.commands import AuditNote
from coordinator.config import Settings
from coordinator.db import make_engine, normalise_url
from coordinator.engine import Engine
from coordinator.history import STANDALONE_LOG_KEEP, HistoryKeeper
from coordinator.log import CommandLog, SingleNodeLog
from coordinator.metrics import Metrics
from coordinator.participant_client import ParticipantClient
from coordinator.registry_watch import RegistryWatch
from coordinator.replicated_log import RaftLog
from coordinator.retention import Retention
from coordinator.store import Store

log = logging.getLogger("txc.node")

STUCK_AFTER_S = 60.0  # an unfinished transaction older than this counts as stuck
MAX_FORWARD_CONNECTIONS = 100  # open connections from a follower to the leader
REFUSAL_LOG_WINDOW_S = 60.0  # refused Raft requests: logged one by one up to ...
REFUSALS_LOGGED_PER_WINDOW = 20  # ... this many per window, then counted
FORWARDED_HEADERS = {
    "authorization",
    "content-type",
    "accept",
    "traceparent",
    "txc-participant",  # a participant's signed call (participant_sdk/signing.py)
    "txc-timestamp",
    "txc-signature",
}
RELAYED_HEADERS = {
    "content-type",
    "txc-leader",
    "retry-after",
    "www-authenticate",
    "txc-answer-signature",
}


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings.validate()
        tracing.configure(settings.otel)
        self.db = make_engine(settings.database_url)
        self.store = Store(self.db)
        self.metrics = Metrics()
        self.registry = participants.from_settings(
            settings.participants_file,
            settings.participant_token,
            private=settings.participants_file_private,
        )
        if self.registry.mode is participants.Mode.SHARED:
            log.warning(
                "participants share one secret (participant_token): any of them can sign for "
                "any other; give each its own in a participants_file (docs/security.md)"
            )
        if not (settings.api_tokens or settings.api_token):
            log.warning(
                "no API tokens: the API is open to every caller (development); serving %s",
                settings.host,
            )
        self.client = ParticipantClient(
            registry=self.registry,
            connections=settings.participant_connections,
            ssl_context=settings.client_ssl(),
        )
        self.raft: RaftLog | None = None
        self.refused_peers = 0  # Raft requests refused (coordinator/raft_endpoint.py)
        self._refusal_window_start = time.monotonic()
        self._refusals_logged = 0
        self._refusals_unlogged = 0
        self.log: CommandLog
        if settings.peers:
            self.raft = RaftLog(
                self.db,
                self.store,
                raft_id=settings.raft_id,
                peer_urls=settings.peer_urls(),
                secret=settings.cluster_secret,
                tick_s=settings.raft_tick_s,
                election_ticks=settings.election_ticks,
                heartbeat_ticks=settings.heartbeat_ticks,
                snapshot_entries=settings.snapshot_entries,
                checkpoint_interval_s=settings.checkpoint_interval_s,
                join=settings.join,
                ssl_context=settings.client_ssl(),
            )
            self.log = self.raft
        else:
            self.log = SingleNodeLog(
                self.db,
                self.store,
                node_id=settings.node_id,
                advertise_url=settings.advertise_url,
                batch_max=settings.log_batch_max,
                queue_max=settings.log_queue_max,
            )
        # The dashboard's calls to the leader (mirroring, relayed admin actions).
        self.http: httpx.AsyncClient | None = None
        # Forwarding API requests to the leader, a hot path for clients that do not follow
        # Txc-Leader: aiohttp, as for participants (DESIGN §9: plain httpx measured ~20x
        # slower at 32 concurrent requests).
        self.forwarder: aiohttp.ClientSession | None = None
        self.engine = Engine(settings, self.log, self.store, self.client, self.metrics)
        self.retention = Retention(
            self.log,
            self.store,
            retention_s=settings.retention_s,
            tombstone_retention_s=settings.tombstone_retention_s,
        )
        self.registry_watch = (
            RegistryWatch(
                settings.participants_file,
                self.registry,
                self.enlisted_names,
                private=settings.participants_file_private,
            )
            if settings.participants_file
            else None
        )
        self.history = HistoryKeeper(
            self.db,
            history_retention_days=settings.history_retention_days,
            standalone_log_keep=None if settings.peers else STANDALONE_LOG_KEEP,
        )

    async def start(self) -> None:
        self.http = httpx.AsyncClient(
            timeout=self.settings.forward_timeout_s, verify=self.settings.client_ssl()
        )
        self.forwarder = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.forward_timeout_s),
            connector=aiohttp.TCPConnector(
                limit=MAX_FORWARD_CONNECTIONS, ssl=self.settings.client_ssl()
            ),
        )
        await self.client.start()
        await self.log.start()
        await self.engine.start()
        self.retention.start()
        self.history.start()
        if self.registry_watch is not None:
            self.registry_watch.start()
        log.info("node %s serving at %s", self.settings.node_id, self.settings.advertise_url)

    def enlisted_names(self) -> set[str]:
        """The participants enlisted in an unfinished transaction (a registry reload may not
        remove them: phase 2 signs for them)."""
        return {p.name for t in self.store.inflight.values() for p in t.participants}

    async def stop(self) -> None:
        if self.registry_watch is not None:
            await self.registry_watch.stop()
        await self.history.stop()
        await self.retention.stop()
        await self.engine.stop()
        await self.log.stop()
        await self.client.close()
        if self.http is not None:
            await self.http.aclose()
        if self.forwarder is not None:
            await self.forwarder.close()
        await self.db.dispose()

    async def readiness_problems(self) -> list[str]:
        problems = []
        if not self.log.is_leader() and self.log.leader_url() is None:
            problems.append("no leader")
        if isinstance(self.log, RaftLog) and self.log.leading_not_ready():
            problems.append("leader of a new term, still applying the log it inherited")
        if self.raft is not None and self.raft.removed:
            problems.append("this node was removed from the group")
        try:
            async with self.db.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as e:
            problems.append(f"storage unreachable: {type(e).__name__}")
        return problems

    async def render_metrics(self) -> str:
        status = self.log.status()
        inflight = list(self.store.inflight.values())
        now = time.time()
        stuck = sum(
            1 for t in inflight if now - t.created_at > STUCK_AFTER_S or t.heuristic is not None
        )
        lag = [m["lag"] for m in status.get("members", []) if isinstance(m.get("lag"), int)]
        extra = {
            "txc_transactions_in_flight": float(len(inflight)),
            "txc_transactions_retrying": float(
                sum(1 for t in inflight if any(p.last_error for p in t.participants))
            ),
            "txc_transactions_stuck": float(stuck),
            "txc_raft_apply_lag": float(
                status.get("commit_index", 0) - status.get("applied_index", 0)
            ),
            "txc_raft_max_follower_lag": float(max(lag, default=0)),
            "txc_raft_term": float(status.get("term", 0)),
            "txc_raft_commit_index": float(status.get("commit_index", 0)),
            "txc_raft_applied_index": float(status.get("applied_index", 0)),
            "txc_is_leader": 1.0 if self.log.is_leader() else 0.0,
            "txc_raft_leader_changes": float(status.get("leader_changes", 0)),
            # What the database holds (a single node writes it with every batch).
            "txc_raft_checkpoint_index": float(
                status.get("checkpoint_index", status.get("applied_index", 0))
            ),
        }
        batcher = self.engine.batcher
        if batcher is not None:
            # Since this process started: requests to participants' /batch, and the phase-2
            # messages they carried (their ratio is the mean batch size).
            extra["txc_phase2_batches"] = float(batcher.batches_sent)
            extra["txc_phase2_batched_messages"] = float(batcher.messages_batched)
        if self.engine.results_log is not None:
            # Phase-2 result proposals that rode in another one's log entry.
            extra["txc_phase2_results_coalesced"] = float(self.engine.results_log.entries_saved)
        return self.metrics.render(extra)

    async def audit(self, who: Principal, action: str, txid: str = "", **detail: Any) -> None:
        """Record an operator's action in the replicated audit trail. The action has already
        taken effect; failing to record it is logged, not hidden."""
        note = AuditNote(txid=txid, at=time.time(), actor=who.name, action=action, detail=detail)
        try:
            await self.log.propose([note])
        except Exception as e:
            log.error("audit record lost for %s %s by %s: %s", action, txid, who.name, e)

    def refused_peer(self, client: str, reason: str) -> None:
        """Log a refused Raft request: the first REFUSALS_LOGGED_PER_WINDOW of each
        REFUSAL_LOG_WINDOW_S, then one line saying how many more were refused (an
        unauthenticated flood must not become a flood of log lines)."""
        now = time.monotonic()
        if now - self._refusal_window_start >= REFUSAL_LOG_WINDOW_S:
            if self._refusals_unlogged:
                log.warning(
                    "refused %d more raft requests in the last %.0f s (not logged one by one)",
                    self._refusals_unlogged,
                    now - self._refusal_window_start,
                )
            self._refusal_window_start = now
            self._refusals_logged = 0
            self._refusals_unlogged = 0
        self.refused_peers += 1
        if self._refusals_logged < REFUSALS_LOGGED_PER_WINDOW:
            self._refusals_logged += 1
            log.warning("refused raft messages from %s: %s", client, reason)
        else:
            self._refusals_unlogged += 1

    async def forward(self, request: Request, leader_url: str) -> Response:
        """Send a request this follower cannot serve to the leader, and relay its answer."""
        assert self.forwarder is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}
        headers["Txc-Forwarded"] = self.settings.node_id
        try:
            async with self.forwarder.request(
                request.method,
                leader_url + request.url.path,
                params=list(request.query_params.multi_items()),
                data=await request.body(),
                headers=headers,
            ) as r:
                content = await r.read()
                status = r.status
                out = {k: v for k, v in r.headers.items() if k.lower() in RELAYED_HEADERS}
        except (aiohttp.ClientError, TimeoutError) as e:
            return JSONResponse(
                {
                    "error": {
                        "code": "not_leader",
                        "message": f"leader unreachable: {type(e).__name__}",
                    }
                },
                status_code=503,
                headers={"Txc-Leader": leader_url},
            )
        # Tell the client where the leader is, so its next request goes there directly: a
        # forwarded request costs this node a second HTTP exchange.
        if not any(k.lower() == "txc-leader" for k in out):
            out["Txc-Leader"] = leader_url
        return Response(content, status_code=status, headers=out)

    def log_unexpected(self, e: BaseException) -> None:
        log.error("unexpected error: %s", e, exc_info=e)


def build_app(settings: Settings, run_migrations: bool = True) -> FastAPI:
    if run_migrations:
        migrate.upgrade(normalise_url(settings.database_url), "coordinator")
    return create_app(Node(settings))
