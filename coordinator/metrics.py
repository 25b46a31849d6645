"""Prometheus metrics in the text exposition format, with no extra dependency.

A handful of counters and one histogram: small enough to write here, and it keeps the hot
path free of a client library's locking.

Besides the totals that /metrics exposes, the same calls feed the dashboard's recent
figures: per-second activity over the last ten minutes and each participant endpoint's
recent success rate, failures and latency (`coordinator.dashboard.series`). Both are bounded
rings, so a busy node's memory does not grow with its traffic."""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coordinator.dashboard.series import (
    LATENCY_BUCKETS_S,
    ActivitySeries,
    ParticipantWindow,
)
from coordinator.model import Outcome, Transaction
from coordinator.participant_client import Reply

__all__ = [
    "LATENCY_BUCKETS_S",
    "MAX_PARTICIPANT_SERIES",
    "Counter",
    "Histogram",
    "Metrics",
    "TimedCalls",
]

MAX_PARTICIPANT_SERIES = 1000  # per-participant label values kept before folding into "other"


@dataclass
class Counter:
    value: float = 0.0
    # Called with the increment: lets the dashboard's per-second series count the same
    # events as the totals without the engine calling two things.
    on_inc: Callable[[float], None] | None = field(default=None, repr=False, compare=False)

    def inc(self, n: float = 1.0) -> None:
        self.value += n
        if self.on_inc is not None:
            self.on_inc(n)


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS_S
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.total += v
        self.n += 1


class Metrics:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        # Wall-clock time: the dashboard's charts are drawn against the operator's clock.
        self.clock = clock
        self.activity = ActivitySeries()
        self.participant_windows: dict[str, ParticipantWindow] = {}
        self.begun = Counter(on_inc=self._counting("begun"))
        self.committed = Counter(on_inc=self._counting("committed"))
        self.aborted = Counter(on_inc=self._counting("aborted"))
        self.phase2_retries = Counter(on_inc=self._counting("retries"))
        self.courtesy_aborts_skipped = Counter()
        self.commit_latency = Histogram()
        self.participant_requests: dict[str, Counter] = defaultdict(Counter)
        self.participant_errors: dict[str, Counter] = defaultdict(Counter)

    def _counting(self, name: str) -> Callable[[float], None]:
        def count(n: float) -> None:
            self.activity.add(self.clock(), name, n)

        return count

    def observe_decision(self, t: Transaction, latency_s: float | None) -> None:
        if t.outcome is Outcome.COMMIT:
            self.committed.inc()
            if latency_s is not None:
                self.commit_latency.observe(latency_s)
                self.activity.observe_latency(self.clock(), latency_s)
        elif t.outcome is Outcome.ABORT:
            self.aborted.inc()

    def _series(self, name: str) -> str:
        if (
            name in self.participant_requests
            or len(self.participant_requests) < MAX_PARTICIPANT_SERIES
        ):
            return name
        return "other"

    def participant_call(self, name: str, reply: Reply, latency_s: float | None = None) -> None:
        """One protocol request to participant `name` and its reply. A request that got no
        answer or a 5xx is an error (a 409 NO vote or a heuristic report is an answer)."""
        key = self._series(name)
        failed = reply.status is None or reply.status >= 500
        self.participant_requests[key].inc()
        if failed:
            self.participant_errors[key].inc()
        now = self.clock()
        self.activity.add(now, "calls")
        if failed:
            self.activity.add(now, "call_failures")
        window = self._window(key)
        window.call(now, not failed, reply.error)
        if latency_s is not None:
            window.latency(now, latency_s)

    def participant_latency(self, name: str, latency_s: float) -> None:
        """The time one protocol request to `name` took (see `timed`)."""
        self._window(self._series(name)).latency(self.clock(), latency_s)

    def _window(self, key: str) -> ParticipantWindow:
        w = self.participant_windows.get(key)
        if w is None:
            w = self.participant_windows[key] = ParticipantWindow()
        return w

    def participants_summary(self) -> list[dict[str, Any]]:
        """Each participant endpoint's recent figures, for the dashboard."""
        now = self.clock()
        return [
            {"name": name, **w.summary(now)} for name, w in sorted(self.participant_windows.items())
        ]

    def timed(self, client: Any) -> TimedCalls:
        """Wrap a `ParticipantClient` so that each protocol request's latency is recorded
        per participant (the engine can pass `metrics.timed(client)` as its client)."""
        return TimedCalls(client, self)

    def render(self, extra: dict[str, float]) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, v in samples:
                lines.append(f"{name}{labels} {v}")

        metric(
            "txc_transactions_begun_total",
            "counter",
            "Transactions begun.",
            [("", self.begun.value)],
        )
        metric(
            "txc_transactions_committed_total",
            "counter",
            "Transactions decided COMMIT.",
            [("", self.committed.value)],
        )
        metric(
            "txc_transactions_aborted_total",
            "counter",
            "Transactions decided ABORT.",
            [("", self.aborted.value)],
        )
        metric(
            "txc_phase2_retries_total",
            "counter",
            "Phase-2 messages that failed and will be retried.",
            [("", self.phase2_retries.value)],
        )
        metric(
            "txc_courtesy_aborts_skipped_total",
            "counter",
            "Courtesy aborts to participants that did not answer prepare, not sent because "
            "too many were in flight (their recovery asks for the outcome instead).",
            [("", self.courtesy_aborts_skipped.value)],
        )
        h = self.commit_latency
        lines.append(
            "# HELP txc_commit_latency_seconds Time from commit request to COMMIT decision."
        )
        lines.append("# TYPE txc_commit_latency_seconds histogram")
        cum = 0
        for b, c in zip(h.buckets, h.counts, strict=False):
            cum += c
            lines.append(f'txc_commit_latency_seconds_bucket{{le="{b}"}} {cum}')
        lines.append(f'txc_commit_latency_seconds_bucket{{le="+Inf"}} {h.n}')
        lines.append(f"txc_commit_latency_seconds_sum {h.total}")
        lines.append(f"txc_commit_latency_seconds_count {h.n}")
        metric(
            "txc_participant_requests_total",
            "counter",
            "Protocol requests sent to participants.",
            [
                (f'{{participant="{_esc(k)}"}}', c.value)
                for k, c in sorted(self.participant_requests.items())
            ],
        )
        metric(
            "txc_participant_errors_total",
            "counter",
            "Protocol requests that got no answer or a 5xx.",
            [
                (f'{{participant="{_esc(k)}"}}', c.value)
                for k, c in sorted(self.participant_errors.items())
            ],
        )
        for name, v in extra.items():
            metric(name, "gauge", name.replace("_", " "), [("", v)])
        return "\n".join(lines) + "\n"


class TimedCalls:
    """A participant client that measures each request: `call` and `call_batch` have the
    signatures of `ParticipantClient`'s, and everything else is the wrapped client's. It sits
    under the phase-2 batcher, so a figure is one request's time on the network and at the
    participant (a batch is one request), never the time a message waited for its batch."""

    def __init__(self, client: Any, metrics: Metrics) -> None:
        self._client = client
        self._metrics = metrics

    async def call(
        self, base_url: str, action: str, txid: str, participant: str, timeout_s: float
    ) -> Reply:
        started = time.perf_counter()
        reply: Reply = await self._client.call(base_url, action, txid, participant, timeout_s)
        self._metrics.participant_latency(participant, time.perf_counter() - started)
        return reply

    async def call_batch(
        self,
        base_url: str,
        participant: str,
        messages: list[tuple[str, str]],
        timeout_s: float,
    ) -> list[Reply] | None:
        started = time.perf_counter()
        replies: list[Reply] | None = await self._client.call_batch(
            base_url, participant, messages, timeout_s
        )
        if replies is not None:  # a refused batch is sent again, one message per request
            self._metrics.participant_latency(participant, time.perf_counter() - started)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
