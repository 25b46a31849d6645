"""Smoke test of `txc bench transfers`: a short run of every scenario, checking the report's
structure and that the banks' money was conserved. Timings never fail it (DESIGN §8): no
figure is compared with anything."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import build_parser

pytestmark = pytest.mark.e2e

LATENCY_KEYS = {"p50", "p95", "p99", "max", "mean"}


def _run(tmp_path: Path, *extra: str) -> dict[str, Any]:
    argv = ["bench", "transfers", "--out-dir", str(tmp_path), "--accounts", "50", *extra]
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    report: dict[str, Any] = json.loads((tmp_path / "transfers.json").read_text())
    png = tmp_path / "transfers.png"
    assert png.exists() == (importlib.util.find_spec("matplotlib") is not None)
    return report


def _money_conserved(s: dict[str, Any]) -> None:
    assert s["total_before"] == s["total_after"], s
    assert s["prepared_left"] == 0, s
    assert s["conserved"] is True


def test_transfers_report_and_conservation(tmp_path: Path) -> None:
    report = _run(
        tmp_path, "--concurrency", "2", "--duration", "2", "--warmup", "0.5", "--no-failover"
    )
    assert report["benchmark"] == "transfers"
    assert {"cpu", "cores", "postgresql"} <= report["machine"].keys()
    names = [s["name"] for s in report["scenarios"]]
    assert names == ["baseline", "txc-1", "txc-3", "txc-3-lazy"]
    for s in report["scenarios"]:
        _money_conserved(s)
        [level] = s["levels"]
        assert level["concurrency"] == 2
        assert level["transfers"] > 0
        assert set(level["latency_ms"]) == LATENCY_KEYS
        assert isinstance(level["throughput_tps"], float)
        if s["nodes"]:
            assert set(level["commit_latency_ms"]) == LATENCY_KEYS
            # Atomicity: a committed transfer wrote one ledger row in each bank, an aborted
            # one none; the rows added come in pairs.
            assert s["ledger_rows_added"] % 2 == 0
            assert s["ledger_rows_added"] >= 2 * level["transfers"]
        else:
            assert level["commit_latency_ms"] is None
    for s in report["scenarios"]:
        [level] = s["levels"]
        per = level["cpu_ms_per_transfer"]
        parts = sum(v for k, v in per.items() if k != "total")
        assert abs(per["total"] - parts) <= 0.1 * len(per), per  # the parts, before rounding
    for r in report["ratios"]:
        base = report["scenarios"][0]["levels"][0]["cpu_ms_per_transfer"]["total"]
        [ours] = [s for s in report["scenarios"] if s["name"] == r["scenario"]]
        total = ours["levels"][0]["cpu_ms_per_transfer"]["total"]
        assert r["cpu_efficiency"] == pytest.approx(base / total, abs=0.01)
    assert {(r["scenario"], r["concurrency"]) for r in report["ratios"]} == {
        ("txc-1", 2),
        ("txc-3", 2),
        ("txc-3-lazy", 2),
    }
    assert len(report["targets"]) == 4
    assert "failover" not in report


def test_failover_report_and_conservation(tmp_path: Path) -> None:
    report = _run(
        tmp_path,
        "--scenarios",
        "",
        "--concurrency",
        "4",
        "--warmup",
        "0.5",
        "--failover-duration",
        "4",
    )
    fo = report["failover"]
    _money_conserved(fo)
    assert fo["killed"]
    assert fo["whole_run"]["transfers"] > 0
    assert fo["ledger_rows_added"] % 2 == 0
    for key in ("first_commit_after_kill_ms", "no_commit_window_ms", "around_kill", "timeline"):
        assert key in fo


def test_phase2_report(tmp_path: Path) -> None:
    """`txc bench phase2`: both modes commit every message (the bench fails otherwise) and
    report CPU per message; nothing here compares the figures."""
    argv = ["bench", "phase2", "--out-dir", str(tmp_path), "--rounds", "2", "--per-round", "20"]
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    report: dict[str, Any] = json.loads((tmp_path / "phase2.json").read_text())
    assert report["benchmark"] == "phase2"
    assert [r["mode"] for r in report["rows"]] == ["single", "batch-8"]
    for r in report["rows"]:
        assert r["messages"] == 40
        assert r["total_us"] == pytest.approx(
            r["participant_us"] + r["postgres_us"] + r["client_us"], abs=0.5
        )


def test_repeat_reports_a_series(tmp_path: Path) -> None:
    """Two runs of two scenarios: the report is the last run's, with the series of both."""
    report = _run(
        tmp_path,
        "--scenarios",
        "baseline,txc-1-lazy",
        "--concurrency",
        "2",
        "--duration",
        "1",
        "--warmup",
        "0.3",
        "--no-failover",
        "--repeat",
        "2",
    )
    series = report["series"]
    assert series["runs"] == 2
    for name in ("baseline", "txc-1-lazy"):
        assert len(series["throughput_tps"][name]["2"]) == 2
    assert (
        report["scenarios"][1]["levels"][0]["throughput_tps"]
        in series["throughput_tps"]["txc-1-lazy"]["2"]
    )
    [r] = series["ratios"]
    assert (r["scenario"], r["concurrency"]) == ("txc-1-lazy", 2)
    assert len(r["throughput_per_run"]) == 2
    for s in report["scenarios"]:
        _money_conserved(s)


def test_repeat_is_bounded(tmp_path: Path) -> None:
    argv = ["bench", "transfers", "--out-dir", str(tmp_path), "--repeat", "0"]
    args = build_parser().parse_args(argv)
    with pytest.raises(SystemExit, match="--repeat must be"):
        args.func(args)
