"""One coordinator node: storage, log, engine and the HTTP API, wired together."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from sqlalchemy import text

from coordinator import migrate
from coordinator.api import create_app
from coordinator.config import Settings
from coordinator.db import make_engine, normalise_url
from coordinator.engine import Engine
from coordinator.log import CommandLog, SingleNodeLog
from coordinator.metrics import Metrics
from coordinator.participant_client import ParticipantClient
from coordinator.store import Store

log = logging.getLogger("txc.node")


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings.validate()
        self.db = make_engine(settings.database_url)
        self.store = Store(self.db)
        self.metrics = Metrics()
        self.client = ParticipantClient(
            token=settings.participant_token, connections=settings.participant_connections
        )
        self.log: CommandLog = SingleNodeLog(
            self.db,
            self.store,
            node_id=settings.node_id,
            advertise_url=settings.advertise_url,
            batch_max=settings.log_batch_max,
            queue_max=settings.log_queue_max,
        )
        self.engine = Engine(settings, self.log, self.store, self.client, self.metrics)

    async def start(self) -> None:
        await self.client.start()
        await self.log.start()
        await self.engine.start()
        log.info("node %s serving at %s", self.settings.node_id, self.settings.advertise_url)

    async def stop(self) -> None:
        await self.engine.stop()
        await self.log.stop()
        await self.client.close()
        await self.db.dispose()

    async def readiness_problems(self) -> list[str]:
        problems = []
        if not self.log.is_leader() and self.log.leader_url() is None:
            problems.append("no leader")
        try:
            async with self.db.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as e:
            problems.append(f"storage unreachable: {type(e).__name__}")
        return problems

    async def render_metrics(self) -> str:
        status = self.log.status()
        inflight = list(self.store.inflight.values())
        extra = {
            "txc_transactions_in_flight": float(len(inflight)),
            "txc_transactions_retrying": float(
                sum(1 for t in inflight if any(p.last_error for p in t.participants))
            ),
            "txc_raft_term": float(status.get("term", 0)),
            "txc_raft_commit_index": float(status.get("commit_index", 0)),
            "txc_raft_applied_index": float(status.get("applied_index", 0)),
            "txc_is_leader": 1.0 if self.log.is_leader() else 0.0,
        }
        return self.metrics.render(extra)

    def log_unexpected(self, e: BaseException) -> None:
        log.error("unexpected error: %s", e, exc_info=e)


def build_app(settings: Settings, run_migrations: bool = True) -> FastAPI:
    if run_migrations:
        migrate.upgrade(normalise_url(settings.database_url), "coordinator")
    return create_app(Node(settings))
