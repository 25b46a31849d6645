"""The benchmarks' reports: terminal tables, ratios, the issue's targets, and PNG charts
(matplotlib, an optional extra: `pip install 'txc[bench]'`; without it the PNG is skipped
with a message)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TARGET_RATIO = 0.5  # txc 3 nodes / baseline throughput at concurrency 32
TARGET_RATIO_CONCURRENCY = 32
TARGET_P99_MS = 25.0  # txc 3 nodes commit latency p99 at concurrency 8
TARGET_P99_CONCURRENCY = 8
TARGET_FAILOVER_MS = 2000.0


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def one_line(name: str, s: dict[str, Any]) -> str:
    lat = s["latency_ms"]
    return (
        f"{name:<8} c={s['concurrency']:<3} {s['throughput_tps']:>8.1f} transfers/s  "
        f"p50 {_ms(lat['p50'])} p95 {_ms(lat['p95'])} p99 {_ms(lat['p99'])} ms  "
        f"errors {s['errors']}"
    )


def failover_line(f: dict[str, Any]) -> str:
    return (
        f"killed {f.get('killed')}: first commit after {f.get('first_commit_after_kill_ms')} ms, "
        f"longest gap without commits {f.get('no_commit_window_ms')} ms, "
        f"failed transfers {f.get('whole_run', {}).get('errors')}"
    )


def _level(scenarios: list[dict[str, Any]], name: str, c: int) -> dict[str, Any] | None:
    for s in scenarios:
        if s["name"] == name:
            for lv in s["levels"]:
                if lv["concurrency"] == c:
                    return lv  # type: ignore[no-any-return]
    return None


def _cpu_ratio(base: dict[str, Any], lv: dict[str, Any]) -> float | None:
    a = (base.get("cpu_ms_per_transfer") or {}).get("total")
    b = (lv.get("cpu_ms_per_transfer") or {}).get("total")
    return round(a / b, 3) if a and b else None


def ratios(scenarios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """txc / baseline, per txc scenario and concurrency level: throughput, p50, p99."""
    out = []
    for s in scenarios:
        if s["nodes"] == 0:
            continue
        for lv in s["levels"]:
            base = _level(scenarios, "baseline", lv["concurrency"])
            if base is None or not base["throughput_tps"]:
                continue
            row: dict[str, Any] = {
                "scenario": s["name"],
                "concurrency": lv["concurrency"],
                "throughput": round(lv["throughput_tps"] / base["throughput_tps"], 3),
                # Baseline CPU per transfer / ours: the throughput ratio a CPU-bound machine
                # would show, from figures that a noisy neighbour moves much less than rates.
                "cpu_efficiency": _cpu_ratio(base, lv),
            }
            for q in ("p50", "p99"):
                a, b = lv["latency_ms"][q], base["latency_ms"][q]
                row[f"latency_{q}"] = round(a / b, 2) if a is not None and b else None
            out.append(row)
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def series(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of the same scenarios (`--repeat`): each one's throughput and CPU per
    transfer, and txc / baseline as the ratio of the means (single runs on a shared machine
    move by 10-20%; a ratio of means over runs that alternate with the baseline is the figure
    to quote), with each run's own ratio beside it."""
    assert runs
    tps: dict[str, dict[str, list[float]]] = {}
    cpu: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        for sc in r["scenarios"]:
            for lv in sc["levels"]:
                c = str(lv["concurrency"])
                tps.setdefault(sc["name"], {}).setdefault(c, []).append(lv["throughput_tps"])
                total = (lv.get("cpu_ms_per_transfer") or {}).get("total")
                if total:
                    cpu.setdefault(sc["name"], {}).setdefault(c, []).append(total)
    mean_tps = {n: {c: round(_mean(v), 1) for c, v in by.items()} for n, by in tps.items()}
    out_ratios = []
    base = tps.get("baseline", {})
    for name, by in tps.items():
        if name == "baseline":
            continue
        for c, values in by.items():
            b = base.get(c)
            if not b or len(b) != len(values) or not _mean(b):
                continue
            row: dict[str, Any] = {
                "scenario": name,
                "concurrency": int(c),
                "throughput": round(_mean(values) / _mean(b), 3),
                "throughput_per_run": [
                    round(v / w, 3) if w else None for v, w in zip(values, b, strict=True)
                ],
            }
            ours, theirs = cpu.get(name, {}).get(c), cpu.get("baseline", {}).get(c)
            if ours and theirs:
                row["cpu_efficiency"] = round(_mean(theirs) / _mean(ours), 3)
            out_ratios.append(row)
    return {
        "runs": len(runs),
        "throughput_tps": tps,
        "cpu_ms_per_transfer": cpu,
        "mean_throughput_tps": mean_tps,
        "ratios": out_ratios,
    }


def series_table(s: dict[str, Any]) -> str:
    n = s["runs"]
    lines = [
        f"series of {n} runs, transfers/s (the ratio is of the means; each run's in brackets):",
        f"{'scenario':<12}{'conc':>5}"
        + "".join(f"{'run ' + str(i + 1):>9}" for i in range(n))
        + f"{'mean':>9}{'x baseline':>12}",
    ]
    rat = {(r["scenario"], r["concurrency"]): r for r in s["ratios"]}
    for name, by in s["throughput_tps"].items():
        for c, values in by.items():
            r = rat.get((name, int(c)))
            line = (
                f"{name:<12}{c:>5}"
                + "".join(f"{v:>9.1f}" for v in values)
                + f"{s['mean_throughput_tps'][name][c]:>9.1f}"
            )
            if r is not None:
                per = ", ".join(f"{x:.2f}" for x in r["throughput_per_run"] if x is not None)
                line += f"{r['throughput']:>12.2f} [{per}]"
            lines.append(line)
    return "\n".join(lines)


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, measured (a report: nothing here fails anything). With a series
    (`--repeat`), the throughput ratio is the series' (of the means), not the last run's."""
    rows: list[dict[str, Any]] = []
    ser = result.get("series")
    for scenario in ("txc-3", "txc-3-lazy"):
        ratio = next(
            (
                r["throughput"]
                for r in (ser["ratios"] if ser else result.get("ratios", []))
                if r["scenario"] == scenario and r["concurrency"] == TARGET_RATIO_CONCURRENCY
            ),
            None,
        )
        ran = any(sc["name"] == scenario for sc in result.get("scenarios", []))
        if scenario != "txc-3" and not ran:
            continue  # the lazy row only when that scenario ran
        rows.append(
            {
                "target": f"throughput {scenario} / baseline >= {TARGET_RATIO} "
                f"at c={TARGET_RATIO_CONCURRENCY}"
                + (f" (mean of {ser['runs']} runs)" if ser else ""),
                "measured": ratio,
                "met": None if ratio is None else ratio >= TARGET_RATIO,
            }
        )
    lv = _level(result["scenarios"], "txc-3", TARGET_P99_CONCURRENCY)
    p99 = lv["latency_ms"]["p99"] if lv else None
    rows.append(
        {
            "target": f"transfer latency p99 <= {TARGET_P99_MS:.0f} ms, txc-3 at "
            f"c={TARGET_P99_CONCURRENCY}",
            "measured": p99,
            "met": None if p99 is None else p99 <= TARGET_P99_MS,
        }
    )
    fo = result.get("failover") or {}
    gap = fo.get("no_commit_window_ms")
    rows.append(
        {
            "target": f"failover window without commits <= {TARGET_FAILOVER_MS:.0f} ms",
            "measured": gap,
            "met": None if gap is None else gap <= TARGET_FAILOVER_MS,
        }
    )
    return rows


def table(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, PostgreSQL {m['postgresql']}, "
        f"Python {m['python']}",
        f"command: {result['command']}",
        "",
        f"{'scenario':<10}{'conc':>5}{'transfers/s':>13}{'p50 ms':>9}{'p95 ms':>9}"
        f"{'p99 ms':>9}{'commit p99':>12}{'errors':>8}{'x baseline':>12}",
    ]
    rat = {(r["scenario"], r["concurrency"]): r["throughput"] for r in result.get("ratios", [])}
    for s in result["scenarios"]:
        for lv in s["levels"]:
            lat = lv["latency_ms"]
            commit = (lv.get("commit_latency_ms") or {}).get("p99")
            r = rat.get((s["name"], lv["concurrency"]))
            lines.append(
                f"{s['name']:<10}{lv['concurrency']:>5}{lv['throughput_tps']:>13.1f}"
                f"{_ms(lat['p50']):>9}{_ms(lat['p95']):>9}{_ms(lat['p99']):>9}"
                f"{_ms(commit):>12}{lv['errors']:>8}{'' if r is None else f'{r:.2f}':>12}"
            )
    lines.append("")
    lines.append("latency: one whole transfer (begin, debit, credit, commit with phase 2)")
    lines.append("cores used while measuring (2.0 = both cores of a 2-core machine busy):")
    for s in result["scenarios"]:
        for lv in s["levels"]:
            cpu = lv.get("cpu_cores") or {}
            parts = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
            lines.append(f"  {s['name']:<8} c={lv['concurrency']:<3} {parts}")
    lines.append("per transfer: CPU ms by process group; PostgreSQL transactions by database group")
    for s in result["scenarios"]:
        for lv in s["levels"]:
            per = lv.get("cpu_ms_per_transfer") or {}
            cpu = ", ".join(f"{k} {v:.1f}" for k, v in per.items())
            db = ", ".join(
                f"{k} {v:.1f}" for k, v in (lv.get("db_transactions_per_transfer") or {}).items()
            )
            lines.append(f"  {s['name']:<8} c={lv['concurrency']:<3} CPU ms: {cpu}; db xacts: {db}")
    effs = [r for r in result.get("ratios", []) if r.get("cpu_efficiency")]
    if effs:
        lines.append("CPU per transfer, baseline / txc (what a CPU-bound machine's ratio follows):")
        for r in effs:
            lines.append(f"  {r['scenario']:<8} c={r['concurrency']:<3} {r['cpu_efficiency']:.2f}")
    for s in result["scenarios"]:
        state = "conserved" if s["conserved"] else "NOT conserved"
        lines.append(
            f"money {s['name']}: {state} (total {s['total_before']} -> {s['total_after']}, "
            f"prepared left {s['prepared_left']})"
        )
    fo = result.get("failover")
    if fo:
        lines.append("")
        lines.append(f"failover: {failover_line(fo)}")
        ak = fo.get("around_kill", {})
        lat = ak.get("latency_ms", {})
        lines.append(
            f"  transfers started around the kill: {ak.get('transfers')} "
            f"({ak.get('failed')} failed), p50 {_ms(lat.get('p50'))} p99 {_ms(lat.get('p99'))} "
            f"max {_ms(lat.get('max'))} ms; before the kill p99 "
            f"{_ms(fo.get('before_kill_latency_ms', {}).get('p99'))} ms; money "
            f"{'conserved' if fo.get('conserved') else 'NOT conserved'}"
        )
    if result.get("series"):
        lines.append("")
        lines.append(series_table(result["series"]))
    lines.append("")
    for t in result.get("targets", []):
        met = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        lines.append(f"target: {t['target']}: measured {t['measured']} ({met})")
    return "\n".join(lines)


def save(result: dict[str, Any], text: str, out_dir: str, name: str) -> Path:
    """Print a benchmark's table and write its JSON (`out_dir/name.json`); returns the
    directory, for the chart that may follow."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print()
    print(text)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nJSON: {path}")
    return out


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


NO_MATPLOTLIB = "matplotlib is not installed (pip install 'txc[bench]')"


def chart(result: dict[str, Any], path: Path) -> Path | str:
    """Throughput and latency per scenario and concurrency, and the failover timeline."""
    plt = _pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    scenarios = result["scenarios"]
    levels = sorted({lv["concurrency"] for s in scenarios for lv in s["levels"]})
    fo = result.get("failover")
    with_failover = bool(fo and fo.get("timeline"))
    ncols = (2 if scenarios else 0) + (1 if with_failover else 0)
    if ncols == 0:
        return "nothing to chart"
    fig, axes_ = plt.subplots(1, ncols, figsize=(6 * ncols, 4.5), squeeze=False)
    axes = list(axes_[0])
    if scenarios:
        width = 0.8 / len(scenarios)
        for i, s in enumerate(scenarios):
            by_c = {lv["concurrency"]: lv for lv in s["levels"]}
            xs = [j + i * width for j in range(len(levels))]
            tps = [by_c[c]["throughput_tps"] if c in by_c else 0 for c in levels]
            axes[0].bar(xs, tps, width, label=s["name"])
            p50 = [by_c[c]["latency_ms"]["p50"] or 0 if c in by_c else 0 for c in levels]
            p99 = [by_c[c]["latency_ms"]["p99"] or 0 if c in by_c else 0 for c in levels]
            axes[1].bar(xs, p99, width, alpha=0.35, color=f"C{i}")
            axes[1].bar(xs, p50, width, label=s["name"], color=f"C{i}")
        centre = [j + width * (len(scenarios) - 1) / 2 for j in range(len(levels))]
        for ax, title, unit in (
            (axes[0], "throughput", "transfers/s"),
            (axes[1], "transfer latency p50 (solid), p99 (light)", "ms (log)"),
        ):
            ax.set_xticks(centre, [f"c={c}" for c in levels])
            ax.set_title(title)
            ax.set_ylabel(unit)
            ax.legend()
        axes[1].set_yscale("log")
    if with_failover and fo:
        ax = axes[-1]
        ax.step([t for t, _ in fo["timeline"]], [n for _, n in fo["timeline"]], where="post")
        ax.axvline(0, color="red", linestyle="--", label=f"SIGKILL {fo.get('killed')}")
        ax.set_title(f"failover: commits per 0.1 s (gap {fo.get('no_commit_window_ms')} ms)")
        ax.set_xlabel("s from the kill")
        ax.legend()
    m = result["machine"]
    fig.suptitle(f"txc bench transfers: {m['cores']} cores, {m['cpu'][:60]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
