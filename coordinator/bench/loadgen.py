"""A closed-loop load generator and the statistics of what it recorded.

Closed loop: `concurrency` workers each run one operation, then the next, for warm-up plus
duration. Only operations that *end* inside the measured window (after the warm-up) count;
those still running when the window closes are waited for (a bounded drain) but not
counted. Throughput = successful operations in the window / window length.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

MAX_SAMPLES = 2_000_000  # per run; a worker stops recording (not working) beyond it
DRAIN_TIMEOUT_S = 60.0  # operations still running when the window closes
TIMELINE_BIN_S = 0.1


def run_bench(main: Coroutine[Any, Any, T]) -> T:
    """Run a benchmark's main coroutine on uvloop where it is installed (the coordinator and
    the participant services run on it under uvicorn). Why: the load generator shares the
    machine with what it measures; on the default event loop it cost ~0.8 ms of CPU per
    transfer (three requests), which the measured processes then did not get."""
    try:
        import uvloop
    except ImportError:  # e.g. Windows: the standard loop
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


@dataclass
class Sample:
    started: float  # time.monotonic()
    ended: float
    ok: bool
    error: str | None = None
    commit_s: float | None = None  # the commit call alone (txc scenarios)

    @property
    def latency_s(self) -> float:
        return self.ended - self.started


@dataclass
class Run:
    """What one closed-loop run recorded."""

    concurrency: int
    window: tuple[float, float]  # monotonic start and end of the measured window
    samples: list[Sample] = field(default_factory=list)
    events: dict[str, float] = field(default_factory=dict)  # e.g. {"kill": monotonic}

    def measured(self) -> list[Sample]:
        lo, hi = self.window
        return [s for s in self.samples if lo <= s.ended < hi]


Operation = Callable[[int], Awaitable[Sample]]


async def closed_loop(
    op: Operation,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    during: Callable[[Run], Awaitable[None]] | None = None,
    *,
    stop: asyncio.Event | None = None,
    record: Callable[[Sample], None] | None = None,
) -> Run:
    """Run `op(worker)` in `concurrency` closed loops. `during`, when given, runs alongside
    (from the start of the window) and may record events in the run (a leader kill).

    `stop`, when given, ends the run early once set (`during` sets it, say): the measured
    window then ends when it was seen set. `record`, when given, receives every sample
    instead of `run.samples` (a long run that keeps its own aggregates, not every sample)."""
    assert concurrency > 0 and duration_s > 0 and warmup_s >= 0
    start = time.monotonic()
    run = Run(concurrency, (start + warmup_s, start + warmup_s + duration_s))

    def keep(s: Sample) -> None:
        if record is not None:
            record(s)
        elif len(run.samples) < MAX_SAMPLES:
            run.samples.append(s)

    async def worker(w: int) -> None:
        while time.monotonic() < run.window[1] and not (stop is not None and stop.is_set()):
            keep(await op(w))

    async def side() -> None:
        if during is None:
            return
        await asyncio.sleep(max(0.0, run.window[0] - time.monotonic()))
        await during(run)

    tasks = [asyncio.create_task(worker(w), name=f"bench-worker-{w}") for w in range(concurrency)]
    side_task = asyncio.create_task(side(), name="bench-side")
    try:
        if stop is None:
            await asyncio.sleep(max(0.0, run.window[1] - time.monotonic()))
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, run.window[1] - time.monotonic()))
            now = time.monotonic()
            if now < run.window[1]:
                run.window = (min(run.window[0], now), now)
        done, pending = await asyncio.wait(
            [*tasks, side_task],
            timeout=DRAIN_TIMEOUT_S + max(0.0, run.window[1] - time.monotonic()),
        )
        for t in done:
            t.result()  # a bug in an operation must not pass silently
        if pending:
            raise RuntimeError(f"{len(pending)} workers still busy {DRAIN_TIMEOUT_S:.0f}s late")
    finally:
        for t in [*tasks, side_task]:
            t.cancel()
        for t in [*tasks, side_task]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
    return run


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in [0, 100])."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary(seconds: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max/mean in milliseconds (None when there is nothing to summarise)."""
    if not seconds:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    v = sorted(seconds)
    ms = {q: percentile(v, q) * 1000 for q in (50, 95, 99)}
    return {
        "p50": round(ms[50], 2),
        "p95": round(ms[95], 2),
        "p99": round(ms[99], 2),
        "max": round(v[-1] * 1000, 2),
        "mean": round(sum(v) / len(v) * 1000, 2),
    }


def summarise(run: Run) -> dict[str, Any]:
    lo, hi = run.window
    measured = run.measured()
    ok = [s for s in measured if s.ok]
    errors: dict[str, int] = {}
    for s in measured:
        if not s.ok:
            key = s.error or "error"
            errors[key] = errors.get(key, 0) + 1
    commit = [s.commit_s for s in ok if s.commit_s is not None]
    return {
        "concurrency": run.concurrency,
        "window_s": round(hi - lo, 3),
        "transfers": len(ok),
        "errors": sum(errors.values()),
        "errors_by_kind": dict(sorted(errors.items(), key=lambda kv: -kv[1])),
        "throughput_tps": round(len(ok) / (hi - lo), 1),
        "latency_ms": latency_summary([s.latency_s for s in ok]),
        "commit_latency_ms": latency_summary(commit) if commit else None,
    }


def timeline(run: Run, origin: float, lo: float, hi: float) -> list[tuple[float, int]]:
    """Successful operations per TIMELINE_BIN_S bin, between `lo` and `hi` seconds from
    `origin`: [(bin start s, count)]."""
    bins = max(1, math.ceil((hi - lo) / TIMELINE_BIN_S))
    counts = [0] * bins
    for s in run.samples:
        if not s.ok:
            continue
        i = math.floor((s.ended - origin - lo) / TIMELINE_BIN_S)
        if 0 <= i < bins:
            counts[i] += 1
    return [(round(lo + i * TIMELINE_BIN_S, 3), c) for i, c in enumerate(counts)]
