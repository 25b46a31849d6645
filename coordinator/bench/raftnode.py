"""A coordinator node for `txc bench raft`: exactly `txc serve` (settings from `TXC_*`, the
same Node, Raft log, storage and transport), plus one endpoint that drives proposals from
inside the node, so that the benchmark measures the replicated log and not an HTTP client.

    POST /bench/raft/drive  {"batch": 16, "concurrency": 32, "duration_s": 3, "warmup_s": 1}

On the leader, `concurrency` closed loops each propose `batch` Begin commands as one
proposal (one log entry) and wait until it is committed on a majority and applied; the
answer gives proposals and commands per second and the proposal latency. The endpoint
demands the `Txc-Bench-Key` header (TXC_BENCH_KEY, random per run).

    python -m coordinator.bench.raftnode
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from coordinator.bench.loadgen import latency_summary
from coordinator.commands import Begin

BENCH_KEY_HEADER = "Txc-Bench-Key"
MAX_BATCH = 10_000
MAX_CONCURRENCY = 1_024
MAX_DURATION_S = 600.0
MAX_LATENCY_SAMPLES = 1_000_000
BENCH_TX_TIMEOUT_S = 3600.0  # begun transactions must not expire (and be aborted) mid-run


def add_drive_endpoint(app: FastAPI, node: Any, key: str) -> None:
    @app.post("/bench/raft/drive", include_in_schema=False)
    async def drive(request: Request) -> JSONResponse:
        if not hmac.compare_digest(request.headers.get(BENCH_KEY_HEADER, ""), key):
            return JSONResponse({"error": {"code": "forbidden"}}, status_code=403)
        body = await request.json()
        batch = int(body.get("batch", 1))
        concurrency = int(body.get("concurrency", 1))
        duration = float(body.get("duration_s", 3))
        warmup = float(body.get("warmup_s", 1))
        if not (
            0 < batch <= MAX_BATCH
            and 0 < concurrency <= MAX_CONCURRENCY
            and 0 < duration <= MAX_DURATION_S
            and 0 <= warmup <= MAX_DURATION_S
        ):
            return JSONResponse({"error": {"code": "out_of_bounds"}}, status_code=400)
        if not node.log.is_leader():
            return JSONResponse({"error": {"code": "not_leader"}}, status_code=409)
        changes = node.log.status().get("leader_changes", 0)
        result = await _drive(node.log, batch, concurrency, duration, warmup)
        # Leadership lost under load (an event loop too busy to heartbeat in time) shows here.
        result["leader_changes"] = node.log.status().get("leader_changes", 0) - changes
        result["still_leader"] = node.log.is_leader()
        return JSONResponse(result)


async def _drive(
    log: Any, batch: int, concurrency: int, duration: float, warmup: float
) -> dict[str, Any]:
    start = time.monotonic()
    lo, hi = start + warmup, start + warmup + duration
    latencies: list[float] = []
    counts = {"proposals": 0, "errors": 0}
    errors: dict[str, int] = {}

    async def proposer() -> None:
        while time.monotonic() < hi:
            now = time.time()
            cmds = [
                Begin(txid=str(uuid.uuid4()), at=now, timeout_s=BENCH_TX_TIMEOUT_S)
                for _ in range(batch)
            ]
            t0 = time.monotonic()
            try:
                await log.propose(cmds)
                ok = True
            except Exception as e:  # NotLeader, LogUnavailable: counted, and the loop goes on
                ok = False
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                await asyncio.sleep(0.01)
            t1 = time.monotonic()
            if lo <= t1 < hi:
                if ok:
                    counts["proposals"] += 1
                    if len(latencies) < MAX_LATENCY_SAMPLES:
                        latencies.append(t1 - t0)
                else:
                    counts["errors"] += 1

    await asyncio.gather(*(proposer() for _ in range(concurrency)))
    return {
        "batch": batch,
        "concurrency": concurrency,
        "window_s": duration,
        "proposals": counts["proposals"],
        "commands": counts["proposals"] * batch,
        "proposals_per_s": round(counts["proposals"] / duration, 1),
        "commands_per_s": round(counts["proposals"] * batch / duration, 1),
        "errors": counts["errors"],
        "errors_by_kind": errors,
        "proposal_latency_ms": latency_summary(latencies),
    }


def main() -> int:
    import uvicorn

    from coordinator import config, logs, migrate
    from coordinator.api import create_app
    from coordinator.db import normalise_url
    from coordinator.node import Node

    settings = config.load().validate()
    logs.configure(
        settings.node_id,
        os.environ.get("TXC_LOG_LEVEL", "WARNING"),
        os.environ.get("TXC_LOG_FORMAT", "json"),
    )
    migrate.upgrade(normalise_url(settings.database_url), "coordinator")
    node = Node(settings)
    app = create_app(node)
    add_drive_endpoint(app, node, os.environ["TXC_BENCH_KEY"])
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
