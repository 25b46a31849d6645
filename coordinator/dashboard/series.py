"""Bounded time series for the dashboard: what happened in each recent second, and how each
participant endpoint behaved over the last few minutes.

Events are counted into the bucket of the second they happen in (event-time bucketing), in a
ring of a fixed number of slots. A slot remembers which second it holds, so a slot left over
from an earlier lap of the ring reads as zero. This needs no sampling task: nothing runs
while nobody commits, nothing is lost between samples, and memory is fixed however busy the
node is. The module has no I/O and takes the time as an argument, so tests drive it with a
fake clock.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Upper bounds (seconds) of the latency histogram's buckets; the same as /metrics uses.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

SERIES_SPAN_S = 600  # the charts cover the last ten minutes, one point per second
ACTIVITY_FIELDS = ("begun", "committed", "aborted", "retries", "calls", "call_failures")

PARTICIPANT_BUCKET_S = 10  # participants' figures are kept in ten-second buckets...
PARTICIPANT_BUCKETS = 30  # ...thirty of them: the "recent" window is five minutes
PARTICIPANT_WINDOW_S = PARTICIPANT_BUCKET_S * PARTICIPANT_BUCKETS
MAX_ERROR_TEXT = 300  # a participant's last error is cut to this many characters
DOWN_AFTER_FAILURES = 3  # consecutive failed calls after which an endpoint is shown as down


def quantile(
    counts: Sequence[int], q: float, buckets: Sequence[float], max_seen: float
) -> float | None:
    """The `q` quantile of a histogram, as the upper bound of the bucket it falls in (capped
    by the largest value seen, so a single fast call does not read as the bucket's bound).
    None for an empty histogram."""
    total = sum(counts)
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for i, c in enumerate(counts):
        seen += c
        if seen >= rank:
            bound = buckets[i] if i < len(buckets) else max_seen
            return min(bound, max_seen)
    return max_seen  # pragma: no cover - the loop always reaches `rank`


@dataclass
class _Latency:
    """A latency histogram with its sum and maximum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    total: float = 0.0
    n: int = 0
    max: float = 0.0

    def observe(self, v: float) -> None:
        v = max(0.0, v)
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, v)] += 1
        self.total += v
        self.n += 1
        self.max = max(self.max, v)

    def merge(self, other: _Latency) -> None:
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.total += other.total
        self.n += other.n
        self.max = max(self.max, other.max)

    def summary(self) -> dict[str, float | None]:
        return {
            "n": self.n,
            "avg": self.total / self.n if self.n else None,
            "p50": quantile(self.counts, 0.5, LATENCY_BUCKETS_S, self.max),
            "p95": quantile(self.counts, 0.95, LATENCY_BUCKETS_S, self.max),
            "max": self.max if self.n else None,
        }


@dataclass
class _Second:
    stamp: int = -1  # the epoch second this slot holds; -1: never used
    values: dict[str, float] = field(default_factory=dict)
    latency: _Latency = field(default_factory=_Latency)


class ActivitySeries:
    """Per-second counts of named events and commit latencies over the last `span_s` seconds.

    `points` returns only whole seconds (the current one is still filling up), oldest first,
    with a zero point for every quiet second, so a chart can plot them without gaps."""

    def __init__(self, fields: Sequence[str] = ACTIVITY_FIELDS, span_s: int = SERIES_SPAN_S):
        assert span_s > 0
        self.fields = tuple(fields)
        self.span_s = span_s
        self._slots = [_Second() for _ in range(span_s)]

    def _slot(self, now: float) -> _Second:
        sec = int(now)
        slot = self._slots[sec % self.span_s]
        if slot.stamp != sec:
            slot.stamp = sec
            slot.values = {}
            slot.latency = _Latency()
        return slot

    def add(self, now: float, name: str, n: float = 1.0) -> None:
        assert name in self.fields, name
        slot = self._slot(now)
        slot.values[name] = slot.values.get(name, 0.0) + n

    def observe_latency(self, now: float, seconds: float) -> None:
        self._slot(now).latency.observe(seconds)

    def points(self, now: float, since: int | None = None) -> list[dict[str, Any]]:
        """Whole seconds after `since` (an epoch second; None: the whole span) up to the one
        before `now`, each `{"t": second, <field>: count, ..., "lat": {...}}`."""
        last = int(now) - 1
        first = last - self.span_s + 1
        if since is not None:
            first = max(first, since + 1)
        out: list[dict[str, Any]] = []
        for sec in range(first, last + 1):
            slot = self._slots[sec % self.span_s]
            fresh = slot.stamp == sec
            point: dict[str, Any] = {"t": sec}
            for name in self.fields:
                point[name] = slot.values.get(name, 0.0) if fresh else 0.0
            point["lat"] = slot.latency.summary() if fresh else _Latency().summary()
            out.append(point)
        return out

    def latency_over(self, now: float, seconds: int) -> dict[str, float | None]:
        """Commit latency over the last `seconds` whole seconds, merged."""
        merged = _Latency()
        last = int(now) - 1
        for sec in range(max(last - seconds + 1, last - self.span_s + 1), last + 1):
            slot = self._slots[sec % self.span_s]
            if slot.stamp == sec:
                merged.merge(slot.latency)
        return merged.summary()


@dataclass
class _CallBucket:
    stamp: int = -1  # index of the PARTICIPANT_BUCKET_S-long interval this bucket holds
    calls: int = 0
    failures: int = 0
    latency: _Latency = field(default_factory=_Latency)


class ParticipantWindow:
    """One participant endpoint's protocol calls over the last `PARTICIPANT_WINDOW_S`: how
    many, how many failed (no answer or a 5xx), their latency when it was measured, the last
    error and how many calls in a row have failed (an endpoint that is down right now)."""

    def __init__(self) -> None:
        self._buckets = [_CallBucket() for _ in range(PARTICIPANT_BUCKETS)]
        self.total_calls = 0
        self.total_failures = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_ok_at: float | None = None
        self.last_call_at: float | None = None

    def _bucket(self, now: float) -> _CallBucket:
        idx = int(now // PARTICIPANT_BUCKET_S)
        b = self._buckets[idx % PARTICIPANT_BUCKETS]
        if b.stamp != idx:
            b.stamp = idx
            b.calls = 0
            b.failures = 0
            b.latency = _Latency()
        return b

    def call(self, now: float, ok: bool, error: str | None = None) -> None:
        b = self._bucket(now)
        b.calls += 1
        self.total_calls += 1
        self.last_call_at = now
        if ok:
            self.consecutive_failures = 0
            self.last_ok_at = now
        else:
            b.failures += 1
            self.total_failures += 1
            self.consecutive_failures += 1
            self.last_error = (error or "no answer")[:MAX_ERROR_TEXT]
            self.last_error_at = now

    def latency(self, now: float, seconds: float) -> None:
        self._bucket(now).latency.observe(seconds)

    def summary(self, now: float) -> dict[str, Any]:
        current = int(now // PARTICIPANT_BUCKET_S)
        calls = failures = 0
        lat = _Latency()
        for b in self._buckets:
            if current - PARTICIPANT_BUCKETS < b.stamp <= current:
                calls += b.calls
                failures += b.failures
                lat.merge(b.latency)
        if self.consecutive_failures >= DOWN_AFTER_FAILURES:
            status = "down"
        elif failures:
            status = "degraded"
        elif calls:
            status = "ok"
        else:
            status = "idle"
        return {
            "window_s": PARTICIPANT_WINDOW_S,
            "calls": calls,
            "failures": failures,
            "success_rate": (calls - failures) / calls if calls else None,
            "latency": lat.summary(),
            "status": status,
            "consecutive_failures": self.consecutive_failures,
            "total_calls": self.total_calls,
            "total_failures": self.total_failures,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_ok_at": self.last_ok_at,
            "last_call_at": self.last_call_at,
        }
