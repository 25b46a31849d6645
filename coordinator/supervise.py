"""`txc up`'s supervisor: a process that dies comes back by itself, and one the user stops on
purpose stays down until they start it again.

`txc up` is the cluster a newcomer experiments on, and the README invites them to kill a
node: the group must heal the way a real deployment's service manager would make it heal.
So each child (coordinator node, demo bank) is restarted after it exits, with a delay that
doubles over consecutive crashes (a node that cannot start must not spin the machine) and
resets once it has run for a while.

`txc node stop NAME` and `txc node start NAME` talk to a running `txc up` through files in
its data directory rather than a socket: a hold file `control/hold-NAME` asks for NAME to be
stopped and kept down, its removal for it to run again; `up.json` is the supervisor's
answer (each child's state and pid, and `txc up`'s own pid, so a command can tell a
supervisor that is gone from one that is slow). Files need no port and no authentication
of their own (the control directory is the user's alone, mode 700) and survive nothing:
`txc up` clears them when it starts and removes `up.json` when it stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from coordinator.procs import Proc, stop_all

BACKOFF_FIRST_S = 0.5  # the delay before the first restart after a crash
BACKOFF_MAX_S = 30.0  # the longest delay, reached after 6 crashes in a row
HEALTHY_AFTER_S = 60.0  # a child that ran this long starts again from the first delay
POLL_S = 0.25  # how often the supervisor looks at its children and at the hold files
CONTROL_WAIT_S = 30.0  # how long `txc node stop|start` waits for the supervisor's answer
STATUS_FILE = "up.json"
CONTROL_DIR = "control"
HOLD_PREFIX = "hold-"
MAX_NAME = 64  # characters in a child's name (it becomes a file name)


class State(StrEnum):
    RUNNING = "running"
    RESTARTING = "restarting"  # exited by itself; starts again at `restart_at`
    HELD = "stopped"  # stopped by `txc node stop`; starts again on `txc node start`


@dataclass
class Backoff:
    """The delays between restarts of one child. Pure: the caller passes the time."""

    first_s: float = BACKOFF_FIRST_S
    max_s: float = BACKOFF_MAX_S
    healthy_after_s: float = HEALTHY_AFTER_S
    crashes: int = 0  # consecutive exits, each after less than `healthy_after_s` of running
    started_at: float = 0.0

    def started(self, now: float) -> None:
        self.started_at = now

    def exited(self, now: float) -> float:
        """The delay before the next start, given that the child exited at `now`."""
        if now - self.started_at >= self.healthy_after_s:
            self.crashes = 0
        delay = min(self.max_s, self.first_s * 2 ** min(self.crashes, 32))
        self.crashes += 1
        assert 0 < delay <= self.max_s
        return delay


@dataclass
class Child:
    proc: Proc
    backoff: Backoff = field(default_factory=Backoff)
    state: State = State.RUNNING
    restart_at: float = 0.0
    restarts: int = 0  # starts after the first, whether after a crash or a `txc node start`


def describe_exit(code: int | None) -> str:
    """'code 1' or 'signal 9 (SIGKILL)': what a user reads to know why a process ended."""
    if code is None:
        return "an unknown status"
    if code < 0:
        try:
            return f"signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def control_dir(data_dir: Path) -> Path:
    return data_dir / CONTROL_DIR


def hold_file(data_dir: Path, name: str) -> Path:
    assert valid_name(name), name
    return control_dir(data_dir) / f"{HOLD_PREFIX}{name}"


def valid_name(name: str) -> bool:
    return 0 < len(name) <= MAX_NAME and all(c.isalnum() or c in "-_" for c in name)


class Supervisor:
    """Restarts `procs` when they exit and obeys the hold files. `step` is one look at every
    child; `run` repeats it until interrupted (Ctrl-C, SIGTERM: `txc up` then stops all)."""

    def __init__(
        self,
        procs: list[Proc],
        data_dir: Path,
        *,
        say: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert len({p.name for p in procs}) == len(procs), "child names must be unique"
        assert all(valid_name(p.name) for p in procs)
        self.data_dir = data_dir
        self.say = say
        self.clock = clock
        now = clock()
        self.children = [Child(p) for p in procs]
        for c in self.children:
            c.backoff.started(now)
        self._status: dict[str, Any] | None = None
        control = control_dir(data_dir)
        control.mkdir(parents=True, exist_ok=True)
        control.chmod(0o700)
        for stale in control.glob(HOLD_PREFIX + "*"):  # an earlier run's: everything runs
            stale.unlink(missing_ok=True)
        self._write_status()

    def _held(self) -> set[str]:
        with contextlib.suppress(OSError):
            names = os.listdir(control_dir(self.data_dir))
            return {n[len(HOLD_PREFIX) :] for n in names if n.startswith(HOLD_PREFIX)}
        return set()

    def _start(self, c: Child, now: float, why: str, said: list[str]) -> None:
        c.proc.start()
        c.backoff.started(now)
        c.restarts += 1
        c.state = State.RUNNING
        pid = c.proc.proc.pid if c.proc.proc else "?"
        said.append(f"{c.proc.name} {why} (pid {pid})")

    def step(self) -> None:
        """One look at every child. What it did is said after `up.json` shows it, so that
        whoever reads the output and then the file finds the file as new as the line."""
        now = self.clock()
        held = self._held()
        said: list[str] = []
        for c in self.children:
            name = c.proc.name
            if c.state is State.RUNNING:
                if name in held:
                    c.proc.stop()
                    c.state = State.HELD
                    said.append(
                        f"{name} stopped (txc node stop); `txc node start {name}` to restart"
                    )
                elif not c.proc.alive:
                    code = c.proc.proc.returncode if c.proc.proc else None
                    delay = c.backoff.exited(now)
                    c.state, c.restart_at = State.RESTARTING, now + delay
                    said.append(
                        f"{name} exited with {describe_exit(code)}; restarting in {delay:.1f}s"
                        f" (log: {c.proc.log_path})"
                    )
            elif c.state is State.RESTARTING:
                if name in held:
                    c.state = State.HELD
                    said.append(f"{name} stays stopped (txc node stop)")
                elif now >= c.restart_at:
                    self._start(c, now, "restarted", said)
            elif name not in held:  # HELD, and the user asked for it back
                self._start(c, now, "started by txc node start", said)
        self._write_status()
        for line in said:
            self.say(line)

    def run(self) -> None:
        while True:
            self.step()
            time.sleep(POLL_S)

    def stop_all(self) -> None:
        stop_all([c.proc for c in self.children])
        status_path(self.data_dir).unlink(missing_ok=True)

    def _write_status(self) -> None:
        status = {
            "pid": os.getpid(),
            "children": {
                c.proc.name: {
                    "state": str(c.state),
                    "pid": c.proc.proc.pid if c.proc.alive and c.proc.proc else None,
                    "restarts": c.restarts,
                    "url": c.proc.url,
                }
                for c in self.children
            },
        }
        if status == self._status:
            return
        path = status_path(self.data_dir)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(status, indent=2))
        os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one
        self._status = status


def status_path(data_dir: Path) -> Path:
    return data_dir / STATUS_FILE


# -- the `txc node` side --------------------------------------------------------------------


class ControlError(Exception):
    """What `txc node` tells the user, one line."""


def read_status(data_dir: Path) -> dict[str, Any]:
    """The running supervisor's status; ControlError when no `txc up` runs on `data_dir`."""
    path = status_path(data_dir)
    try:
        status: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ControlError(f"no `txc up` is running with data directory {data_dir}") from None
    except (OSError, ValueError) as e:
        raise ControlError(f"cannot read {path}: {e}") from None
    pid = status.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        raise ControlError(f"the `txc up` that wrote {path} is no longer running")
    return status


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def child_name(status: dict[str, Any], name: str) -> str:
    """`2` means `node2`; any other name must be one of the children."""
    known = list(status.get("children", {}))
    full = f"node{name}" if name.isdigit() else name
    if full not in known:
        raise ControlError(f"no process named {name!r}; `txc up` runs {', '.join(known)}")
    return full


def request(data_dir: Path, name: str, *, stop: bool, wait_s: float = CONTROL_WAIT_S) -> str:
    """Ask the supervisor to stop (hold) or start `name`; returns once it has, with a line
    for the user. ControlError if it does not answer within `wait_s`."""
    full = child_name(read_status(data_dir), name)
    hold = hold_file(data_dir, full)
    if stop:
        hold.touch()
    else:
        hold.unlink(missing_ok=True)
    want = State.HELD if stop else State.RUNNING
    deadline = time.monotonic() + wait_s
    while True:
        child = read_status(data_dir)["children"][full]
        if child["state"] == want and (stop or child["pid"] is not None):
            return f"{full} {'stopped' if stop else 'running, pid ' + str(child['pid'])}"
        if time.monotonic() > deadline:
            raise ControlError(f"{full} is still {child['state']} after {wait_s:.0f}s")
        time.sleep(POLL_S)
