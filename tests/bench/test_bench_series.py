"""`txc bench transfers --repeat N`: the series of runs and its ratios (of the means). A
report, so the figures are only checked for being the arithmetic of the runs they summarize."""

from __future__ import annotations

from typing import Any

import pytest

from coordinator.bench import report


def _run(baseline: float, txc: float, cpu_base: float, cpu_txc: float) -> dict[str, Any]:
    def level(tps: float, cpu: float) -> dict[str, Any]:
        return {"concurrency": 32, "throughput_tps": tps, "cpu_ms_per_transfer": {"total": cpu}}

    return {
        "scenarios": [
            {"name": "baseline", "nodes": 0, "levels": [level(baseline, cpu_base)]},
            {"name": "txc-3-lazy", "nodes": 3, "levels": [level(txc, cpu_txc)]},
        ],
        "ratios": [{"scenario": "txc-3-lazy", "concurrency": 32, "throughput": txc / baseline}],
    }


def test_series_ratio_is_of_the_means_with_each_runs_beside_it() -> None:
    runs = [_run(300.0, 140.0, 5.0, 12.0), _run(250.0, 150.0, 6.0, 11.0)]
    s = report.series(runs)
    assert s["runs"] == 2
    assert s["throughput_tps"]["txc-3-lazy"]["32"] == [140.0, 150.0]
    assert s["mean_throughput_tps"] == {"baseline": {"32": 275.0}, "txc-3-lazy": {"32": 145.0}}
    [r] = s["ratios"]
    assert r["scenario"] == "txc-3-lazy" and r["concurrency"] == 32
    assert r["throughput"] == pytest.approx(145.0 / 275.0, abs=0.001)
    assert r["throughput_per_run"] == [pytest.approx(140 / 300, abs=0.001), 0.6]
    assert r["cpu_efficiency"] == pytest.approx(5.5 / 11.5, abs=0.001)
    table = report.series_table(s)
    assert "run 1" in table and "run 2" in table and "0.53 [0.47, 0.60]" in table


def test_targets_quote_the_series_when_there_is_one() -> None:
    """The last run alone says 0.60; the series of two says 0.53, and that is the target's."""
    runs = [_run(300.0, 140.0, 5.0, 12.0), _run(250.0, 150.0, 6.0, 11.0)]
    result = {**runs[-1], "series": report.series(runs)}
    [lazy] = [t for t in report.targets(result) if "txc-3-lazy" in t["target"]]
    assert lazy["measured"] == pytest.approx(0.527, abs=0.001)
    assert lazy["met"] is True and "(mean of 2 runs)" in lazy["target"]
    alone = [t for t in report.targets(runs[-1]) if "txc-3-lazy" in t["target"]]
    assert alone[0]["measured"] == pytest.approx(0.6) and "mean of" not in alone[0]["target"]
