"""Smoke test of `txc bench soak`: a short soak with a follower outage, checking the report's
structure and what holds at any speed: retention forgot records (the leader's history table
has rows at the end), the banks' money was conserved, the killed follower rejoined. Timings
never fail it (DESIGN §8): no figure is compared with anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import build_parser

pytestmark = pytest.mark.e2e

NODES = {"node1", "node2", "node3"}
LATENCY_KEYS = {"p50", "p95", "p99", "max", "mean"}
WINDOW_KEYS = {
    "window",
    "t_s",
    "length_s",
    "transfers",
    "errors",
    "errors_by_kind",
    "throughput_tps",
    "latency_ms",
    "finished_total",
    "leader",
    "nodes",
    "events",
}
NODE_KEYS = {
    "alive",
    "pid",
    "rss_mb",
    "records",
    "in_flight",
    "tombstones",
    "history_rows",
    "snapshot_bytes",
    "snapshot_records",
    "forgotten_by_this_node",
    "role",
    "term",
    "commit_index",
    "applied_index",
    "snapshot_index",
    "leader",
}
TRANSACTIONS = 400


def test_soak_report_retention_outage_and_conservation(tmp_path: Path) -> None:
    argv = [
        "bench",
        "soak",
        "--out-dir",
        str(tmp_path),
        "--transactions",
        str(TRANSACTIONS),
        "--window-s",
        "2",
        "--concurrency",
        "8",
        "--accounts",
        "50",
        "--retention-s",
        "1",
        "--tombstone-retention-s",
        "30",
        "--snapshot-entries",
        "50",
    ]
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    report: dict[str, Any] = json.loads((tmp_path / "soak.json").read_text())
    assert report["benchmark"] == "soak"
    assert report["settings"]["retention_s"] == 1.0
    assert report["settings"]["snapshot_entries"] == 50

    windows = report["windows"]
    assert windows
    for i, w in enumerate(windows, 1):
        assert set(w) == WINDOW_KEYS, w.keys()
        assert w["window"] == i
        assert set(w["latency_ms"]) == LATENCY_KEYS
        assert set(w["nodes"]) == NODES
        for f in w["nodes"].values():
            assert set(f) == NODE_KEYS
    assert [w["finished_total"] for w in windows] == sorted(w["finished_total"] for w in windows)
    summary = report["summary"]
    assert summary["transfers_finished"] >= TRANSACTIONS
    assert sum(w["transfers"] for w in windows) <= summary["transfers_committed"]
    assert summary["transfers_committed"] > 0
    assert set(summary["rss"]) == set(summary["snapshot_bytes"]) == NODES
    assert "throughput_last_over_first" in summary

    # Retention forgot finished records: their full records went to the history table.
    final = report["final"]
    assert final["leader"] in NODES
    leader = final["nodes"][final["leader"]]
    assert leader["history_rows"] > 0
    assert leader["forgotten_by_this_node"] > 0
    assert leader["snapshot_bytes"] > 0

    money = report["money"]
    assert money["total_before"] == money["total_after"], money
    assert money["prepared_left"] == 0
    assert money["conserved"] is True

    # The follower killed at a third came back and caught up.
    outage = report["outage"]
    assert outage["node"] in NODES
    assert outage["node"] != outage["leader_at_kill"]
    assert "error" not in outage, outage
    assert outage["caught_up_s"] is not None
    assert outage["applied_index_after_rejoin"] >= outage["leader_commit_index_at_restart"]
    assert isinstance(outage["by_snapshot"], bool)
    assert final["nodes"][outage["node"]]["alive"] is True
    assert summary["rss"][outage["node"]]["restarted"] is True
    assert any(w["events"] for w in windows)


def test_soak_refuses_a_short_tombstone_retention(tmp_path: Path) -> None:
    argv = ["bench", "soak", "--out-dir", str(tmp_path), "--tombstone-retention-s", "5"]
    args = build_parser().parse_args(argv)
    with pytest.raises(SystemExit, match="tombstone-retention-s"):
        args.func(args)
