"""Prometheus metrics in the text exposition format, with no extra dependency.

A handful of counters and one histogram: small enough to write here, and it keeps the hot
path free of a client library's locking."""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field

from coordinator.model import Outcome, Transaction
from coordinator.participant_client import Reply

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_PARTICIPANT_SERIES = 1000  # per-participant label values kept before folding into "other"


@dataclass
class Counter:
    value: float = 0.0

    def inc(self, n: float = 1.0) -> None:
        self.value += n


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
    def __init__(self) -> None:
        self.begun = Counter()
        self.committed = Counter()
        self.aborted = Counter()
        self.phase2_retries = Counter()
        self.commit_latency = Histogram()
        self.participant_requests: dict[str, Counter] = defaultdict(Counter)
        self.participant_errors: dict[str, Counter] = defaultdict(Counter)

    def observe_decision(self, t: Transaction, latency_s: float | None) -> None:
        if t.outcome is Outcome.COMMIT:
            self.committed.inc()
            if latency_s is not None:
                self.commit_latency.observe(latency_s)
        elif t.outcome is Outcome.ABORT:
            self.aborted.inc()

    def _series(self, name: str) -> str:
        if (
            name in self.participant_requests
            or len(self.participant_requests) < MAX_PARTICIPANT_SERIES
        ):
            return name
        return "other"

    def participant_call(self, name: str, reply: Reply) -> None:
        key = self._series(name)
        self.participant_requests[key].inc()
        if reply.status is None or reply.status >= 500:
            self.participant_errors[key].inc()

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


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
