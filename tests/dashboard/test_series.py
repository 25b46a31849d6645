"""The dashboard's bounded time series and the metrics that feed them, with a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.dashboard.feed import (
    FLAG_EXPIRED,
    FLAG_HEURISTIC,
    FLAG_RETRYING,
    MAX_LIVE_ROWS,
    flags,
    live_rows,
)
from coordinator.dashboard.series import (
    DOWN_AFTER_FAILURES,
    LATENCY_BUCKETS_S,
    MAX_ERROR_TEXT,
    PARTICIPANT_WINDOW_S,
    ActivitySeries,
    ParticipantWindow,
    quantile,
)
from coordinator.metrics import Metrics
from coordinator.model import Heuristic, Outcome, Participant, Phase2, Transaction, TxState
from coordinator.participant_client import Reply

T0 = 1_800_000_000.0  # an epoch second, so buckets line up


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_points_are_whole_seconds_with_quiet_seconds_as_zero() -> None:
    s = ActivitySeries(("begun", "committed"), span_s=10)
    s.add(T0 + 0.2, "begun")
    s.add(T0 + 0.9, "begun")
    s.add(T0 + 2.5, "committed", 3)
    s.add(T0 + 3.1, "begun")  # the current second: not reported yet
    pts = s.points(T0 + 3.5)
    assert [p["t"] for p in pts] == list(range(int(T0) - 7, int(T0) + 3))
    by_t = {p["t"]: p for p in pts}
    assert by_t[int(T0)]["begun"] == 2 and by_t[int(T0)]["committed"] == 0
    assert by_t[int(T0) + 1] == {**by_t[int(T0) + 1], "begun": 0, "committed": 0}
    assert by_t[int(T0) + 2]["committed"] == 3
    assert by_t[int(T0) + 1]["lat"]["n"] == 0 and by_t[int(T0) + 1]["lat"]["p95"] is None


def test_since_returns_only_newer_seconds() -> None:
    s = ActivitySeries(("begun",), span_s=60)
    for i in range(10):
        s.add(T0 + i, "begun", i)
    pts = s.points(T0 + 10, since=int(T0) + 6)
    assert [(p["t"] - int(T0), p["begun"]) for p in pts] == [(7, 7), (8, 8), (9, 9)]
    assert s.points(T0 + 10, since=int(T0) + 9) == []


def test_the_ring_forgets_what_is_older_than_its_span() -> None:
    s = ActivitySeries(("begun",), span_s=5)
    s.add(T0, "begun", 7)
    # Five seconds later the slot of T0 is reused by T0+5, and T0 is out of the window.
    s.add(T0 + 5, "begun", 1)
    pts = s.points(T0 + 6)
    assert len(pts) == 5
    assert [p["begun"] for p in pts] == [0, 0, 0, 0, 1]
    # A slot last written a whole lap ago reads as zero, not as its old value.
    s2 = ActivitySeries(("begun",), span_s=5)
    s2.add(T0, "begun", 7)
    assert all(p["begun"] == 0 for p in s2.points(T0 + 11))


def test_unknown_field_is_a_programming_error() -> None:
    with pytest.raises(AssertionError):
        ActivitySeries(("begun",)).add(T0, "nope")


def test_latency_summary_per_second_and_over_a_window() -> None:
    s = ActivitySeries(("committed",), span_s=60)
    for v in (0.004, 0.004, 0.004, 0.2):
        s.observe_latency(T0 + 1.5, v)
    s.observe_latency(T0 + 30.5, 0.05)
    [p] = [p for p in s.points(T0 + 2) if p["t"] == int(T0) + 1]
    assert p["lat"]["n"] == 4
    assert p["lat"]["avg"] == pytest.approx(0.053)
    assert p["lat"]["p50"] == 0.005  # the upper bound of the 2.5-5 ms bucket
    assert p["lat"]["p95"] == 0.2  # capped by the largest value seen, not the bucket's 0.25
    assert p["lat"]["max"] == 0.2
    last_10 = s.latency_over(T0 + 31, 10)
    assert last_10["n"] == 1 and last_10["max"] == 0.05
    assert s.latency_over(T0 + 31, 60)["n"] == 5


def test_quantile_edges() -> None:
    empty = [0] * (len(LATENCY_BUCKETS_S) + 1)
    assert quantile(empty, 0.95, LATENCY_BUCKETS_S, 0.0) is None
    over = list(empty)
    over[-1] = 2  # both above the last bucket's bound
    assert quantile(over, 0.5, LATENCY_BUCKETS_S, 42.0) == 42.0


def test_participant_window_rates_failures_and_down() -> None:
    w = ParticipantWindow()
    for i in range(8):
        w.call(T0 + i, ok=True)
    w.latency(T0 + 1, 0.010)
    w.latency(T0 + 2, 0.030)
    summary = w.summary(T0 + 9)
    assert summary["calls"] == 8 and summary["failures"] == 0 and summary["status"] == "ok"
    assert summary["success_rate"] == 1.0
    assert summary["latency"]["avg"] == pytest.approx(0.02)
    for i in range(DOWN_AFTER_FAILURES):
        w.call(T0 + 10 + i, ok=False, error="x" * (MAX_ERROR_TEXT + 50))
    summary = w.summary(T0 + 20)
    assert summary["status"] == "down"
    assert summary["consecutive_failures"] == DOWN_AFTER_FAILURES
    assert summary["success_rate"] == pytest.approx(8 / (8 + DOWN_AFTER_FAILURES))
    assert len(summary["last_error"]) == MAX_ERROR_TEXT
    assert summary["last_error_at"] == T0 + 10 + DOWN_AFTER_FAILURES - 1
    w.call(T0 + 21, ok=True)
    assert w.summary(T0 + 21)["status"] == "degraded"  # answering again; failures are recent
    # Past the window, the figures are gone but the totals and the last error stay.
    later = w.summary(T0 + 21 + PARTICIPANT_WINDOW_S + 10)
    assert later["calls"] == 0 and later["status"] == "idle" and later["success_rate"] is None
    assert later["total_calls"] == 8 + DOWN_AFTER_FAILURES + 1
    assert later["last_error"] is not None


def test_metrics_feed_the_series_and_keep_their_names() -> None:
    clock = Clock()
    m = Metrics(clock=clock)
    m.begun.inc()
    m.begun.inc()
    m.phase2_retries.inc()
    committed = Transaction("t1", TxState.COMMITTED, T0, T0 + 60, T0, outcome=Outcome.COMMIT)
    aborted = Transaction("t2", TxState.ABORTED, T0, T0 + 60, T0, outcome=Outcome.ABORT)
    m.observe_decision(committed, 0.012)
    m.observe_decision(aborted, None)
    m.participant_call("bank-a", Reply(200, {}), latency_s=0.003)
    m.participant_call("bank-b", Reply(None, error="commit: no answer within 1.0s"))
    m.participant_call("bank-b", Reply(503, {}, error="commit: HTTP 503"))
    m.participant_call("bank-b", Reply(409, {"vote": "no"}))  # an answer, not a failure
    clock.now += 1
    [p] = m.activity.points(clock.now, since=int(T0) - 1)
    assert (p["begun"], p["committed"], p["aborted"], p["retries"]) == (2, 1, 1, 1)
    assert (p["calls"], p["call_failures"]) == (4, 2)
    assert p["lat"]["n"] == 1 and p["lat"]["max"] == 0.012
    # the totals /metrics exposes, under their old names
    assert m.begun.value == 2 and m.committed.value == 1 and m.aborted.value == 1
    assert m.participant_requests["bank-b"].value == 3
    assert m.participant_errors["bank-b"].value == 2
    text = m.render({})
    for name in (
        "txc_transactions_begun_total 2.0",
        "txc_transactions_committed_total 1.0",
        'txc_participant_errors_total{participant="bank-b"} 2.0',
        "txc_commit_latency_seconds_count 1",
    ):
        assert name in text
    parts = {p["name"]: p for p in m.participants_summary()}
    assert parts["bank-a"]["latency"]["n"] == 1 and parts["bank-a"]["status"] == "ok"
    assert parts["bank-b"]["failures"] == 2 and parts["bank-b"]["consecutive_failures"] == 0
    assert parts["bank-b"]["last_error"] == "commit: HTTP 503"


async def test_timed_calls_record_each_call_latency() -> None:
    m = Metrics()

    class SlowClient:
        closed = False

        async def call(self, base_url: str, action: str, txid: str, name: str, t: float) -> Reply:
            await asyncio.sleep(0.02)
            return Reply(200, {"vote": "yes"})

        async def close(self) -> None:
            self.closed = True

    inner = SlowClient()
    timed = m.timed(inner)
    reply = await timed.call("http://x", "prepare", "t1", "bank-a", 1.0)
    assert reply.status == 200
    [summary] = m.participants_summary()
    assert summary["name"] == "bank-a" and summary["latency"]["n"] == 1
    assert summary["latency"]["max"] >= 0.02
    await timed.close()  # everything but `call` is the wrapped client's
    assert inner.closed


def _txn(txid: str, created: float, **kw: object) -> Transaction:
    """A transaction that expires a minute after it began."""
    state = kw.pop("state", TxState.ACTIVE)
    return Transaction(txid, state, created, created + 60, created, **kw)  # type: ignore[arg-type]


def test_flags_say_why_a_transaction_needs_attention() -> None:
    now = T0 + 100
    quiet = _txn("quiet", T0 + 90)
    assert flags(quiet, now) == []
    expired = _txn("old", T0)
    assert flags(expired, now) == [FLAG_EXPIRED]
    p = Participant("inv", "http://inv", T0, phase2=Phase2.PENDING, attempts=1, last_error="down")
    retrying = _txn(
        "r", T0 + 90, state=TxState.COMMITTING, outcome=Outcome.COMMIT, participants=[p]
    )
    assert flags(retrying, now) == [FLAG_RETRYING]
    done = Participant("inv", "http://inv", T0, phase2=Phase2.DONE, attempts=3)
    heur = _txn(
        "h",
        T0 + 90,
        state=TxState.COMMITTED,
        outcome=Outcome.COMMIT,
        heuristic=Heuristic.MIXED,
        participants=[done],
    )
    assert flags(heur, now) == [FLAG_HEURISTIC]
    heur.heuristic_acknowledged = True
    assert flags(heur, now) == []


def test_live_rows_put_flagged_first_then_oldest_and_are_bounded() -> None:
    now = T0 + 1000
    txns = [_txn(f"t{i:04d}", T0 + 950 + i / 10) for i in range(MAX_LIVE_ROWS + 5)]
    stuck = _txn("stuck", T0 + 900, state=TxState.COMMITTING, outcome=Outcome.COMMIT)
    stuck.participants = [
        Participant("inv", "http://inv", T0, phase2=Phase2.PENDING, attempts=2, last_error="x")
    ]
    out = live_rows([*txns, stuck], now)
    assert out["total"] == MAX_LIVE_ROWS + 6
    assert out["truncated"] and len(out["rows"]) == MAX_LIVE_ROWS
    assert out["flagged"] == 1
    assert out["rows"][0]["txid"] == "stuck" and out["rows"][0]["flags"] == [FLAG_RETRYING]
    assert [r["txid"] for r in out["rows"][1:4]] == ["t0000", "t0001", "t0002"]
    assert out["by_state"] == {"active": MAX_LIVE_ROWS + 5, "committing": 1}
    assert out["rows"][1]["age_s"] == pytest.approx(50)
