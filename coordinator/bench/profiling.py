"""Where the CPU goes during a benchmark: CPU seconds per process group (from /proc), and an
optional sampling profile of chosen processes with py-spy (when it is installed).

py-spy attaches to a running process by pid (`record --pid --nonblocking`: the target is
never paused) and writes collapsed stacks; `top_functions` turns them into a short table
of self and inclusive time per function.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PY_SPY_RATE_HZ = 100
PY_SPY_GRACE_S = 30.0  # py-spy's own start and write-out, beyond the recording
MAX_PROC_SCAN = 100_000  # /proc entries looked at when summing PostgreSQL's backends
TOP_N = 20


# -- CPU accounting ---------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 onwards)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (Linux); None when it is gone."""
    fields = _stat(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # fields 14, 15


def children_of(parent: int) -> list[int]:
    """`parent` and the processes whose parent it is (a postmaster and its backends)."""
    out = [parent]
    try:
        entries = os.listdir("/proc")[:MAX_PROC_SCAN]
    except OSError:
        return out
    for e in entries:
        if e.isdigit():
            fields = _stat(int(e))
            if fields is not None and fields[1] == str(parent):
                out.append(int(e))
    return out


MACHINE = "whole machine"
INTERRUPTS = "interrupts"
Snapshot = dict[str, dict[int, float]]


def _machine_busy_seconds() -> tuple[float, float] | None:
    """CPU seconds all cores spent since boot (/proc/stat) in processes (user, nice,
    system, steal), and in interrupts (irq, softirq: loopback networking lands there,
    attributed to no process)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    ticks = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + steal) / ticks, (irq + softirq) / ticks


def cpu_snapshot(groups: dict[str, list[int]]) -> Snapshot:
    """CPU seconds consumed so far by each process of each group, and under MACHINE (pid 0)
    all the machine's busy time."""
    out: Snapshot = {}
    for name, pids in groups.items():
        out[name] = {p: s for p in pids if (s := _cpu_seconds(p)) is not None}
    busy = _machine_busy_seconds()
    if busy is not None:
        out[MACHINE] = {0: busy[0]}
        out[INTERRUPTS] = {0: busy[1]}
    return out


def cpu_share(before: Snapshot, after: Snapshot, wall_s: float) -> dict[str, float]:
    """Cores used per group over the interval (1.0 = one core fully busy), and "others":
    what the rest of the machine used meanwhile (other programs running on it skew every
    figure). A process that started in between counts whole; one that exited in between is
    missed (a lower bound for the group, an upper one for "others")."""
    if wall_s <= 0:
        return {}
    out: dict[str, float] = {}
    for name, pids in after.items():
        old = before.get(name, {})
        used = sum(max(0.0, s - old.get(pid, 0.0)) for pid, s in pids.items())
        out[name] = round(used / wall_s, 2)
    if MACHINE in out:
        ours = sum(v for k, v in out.items() if k not in (MACHINE, INTERRUPTS))
        out["others"] = round(max(0.0, out[MACHINE] - ours), 2)
        out[MACHINE] = round(out[MACHINE] + out.get(INTERRUPTS, 0.0), 2)
    return out


def machine_busy_cores(interval_s: float) -> float | None:
    """Cores the whole machine keeps busy, sampled over `interval_s` (blocks)."""
    a = _machine_busy_seconds()
    time.sleep(interval_s)
    b = _machine_busy_seconds()
    return None if a is None or b is None else (sum(b) - sum(a)) / interval_s


# -- py-spy -----------------------------------------------------------------------------------


def py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else None


@dataclass
class Recording:
    pid: int
    name: str
    path: Path
    proc: subprocess.Popen[bytes]

    def wait(self, timeout_s: float) -> bool:
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return False
        return self.proc.returncode == 0 and self.path.exists()


def start_recording(exe: str, pid: int, name: str, seconds: float, out_dir: Path) -> Recording:
    path = out_dir / f"profile-{name}.txt"
    log = open(out_dir / f"profile-{name}.log", "wb")  # closed once the child has it
    with log:
        proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, round(seconds))),
                "--rate",
                str(PY_SPY_RATE_HZ),
                "--format",
                "raw",
                "--nonblocking",
                "--gil",  # only the thread holding the GIL: Python's on-CPU time
                "--output",
                str(path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return Recording(pid, name, path, proc)


def _frame_name(frame: str) -> str:
    """'func (path/to/module.py:123)' -> 'func (module.py)'; idle frames kept as they are."""
    func, sep, where = frame.rpartition(" (")
    if not sep:
        return frame
    file = where.rstrip(")").rsplit(":", 1)[0]
    parts = file.replace("\\", "/").split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else parts[0]
    return f"{func} ({short})"


def _package(frame: str) -> str:
    """The library (or our package) a frame belongs to: py-spy names files relative to
    their sys.path entry ("sqlalchemy/engine/base.py", "selectors.py")."""
    _, sep, where = frame.rpartition(" (")
    if not sep:
        return "other"
    parts = where.rstrip(")").rsplit(":", 1)[0].replace("\\", "/").split("/")
    if parts[0] in ("coordinator", "participant_sdk", "txc_demo") and len(parts) > 1:
        return "/".join(parts[:2]).removesuffix(".py")
    if parts[0].startswith("<"):
        return "stdlib"
    return parts[0].removesuffix(".py")


def top_functions(path: Path, top: int = TOP_N) -> dict[str, object]:
    """From py-spy's raw (collapsed) output: total samples, the top functions by self time
    and by inclusive time, and self time per package (as % of all samples)."""
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    by_pkg: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if " (" in f]
        if not frames:
            continue
        total += n
        self_t[_frame_name(frames[-1])] += n
        by_pkg[_package(frames[-1])] += n
        for name in {_frame_name(f) for f in frames}:
            incl[name] += n

    def pct(c: Counter[str]) -> list[dict[str, object]]:
        return [
            {"function": k, "percent": round(100 * v / total, 1)} for k, v in c.most_common(top)
        ]

    return {
        "samples": total,
        "self": pct(self_t) if total else [],
        "inclusive": pct(incl) if total else [],
        "self_by_package": pct(by_pkg) if total else [],
    }
