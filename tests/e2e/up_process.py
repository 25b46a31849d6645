"""`txc up` run as a new user runs it: a real process in its own session (as a terminal's
job), its output collected line by line, its port layout known."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from coordinator import shutdown
from tests.helpers import free_port

UP_TIMEOUT_S = 120.0  # until "txc is up." (the embedded PostgreSQL's initdb included)
BANK_OFFSETS = (101, 102)  # `txc up`'s demo banks listen at the first node's port + these
MARIADB_BANK_OFFSET = 103  # and bank-c, with --demo-mysql


def port_free(port: int) -> bool:
    """Nothing listens on `port` (connections of a closed listener in TIME_WAIT do not
    count: SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def base_port(nodes: int = 3) -> int:
    """A port P with P..P+nodes-1 and the banks' ports free (`txc up`'s layout)."""
    for _ in range(50):
        p = free_port()
        offsets = (*range(nodes), *BANK_OFFSETS, MARIADB_BANK_OFFSET)
        if p + max(offsets) < 65535 and all(port_free(p + d) for d in offsets):
            return p
    raise AssertionError("no free port range")


class UpProcess:
    def __init__(self, data: Path, port: int, extra: list[str] | None = None) -> None:
        self.data, self.port = data, port
        self.lines: list[str] = []
        self._seen = threading.Condition()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TXC_")}
        cmd = [sys.executable, "-m", "coordinator", "up", "--data-dir", str(data)]
        cmd += ["--port", str(port), *(extra or [])]
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout_s: float, after: int = 0) -> int:
        """Wait until a line from index `after` on contains `text`; returns its index."""
        deadline = time.monotonic() + timeout_s
        with self._seen:
            while True:
                for i in range(after, len(self.lines)):
                    if text in self.lines[i]:
                        return i
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"no {text!r} in the output of txc up:\n{self.output}")
                self._seen.wait(min(left, 0.5))

    def wait_up(self) -> None:
        self.wait_for("txc is up.", UP_TIMEOUT_S)

    def ports(self, nodes: int = 3, banks: bool = True) -> list[int]:
        return [self.port + d for d in (*range(nodes), *(BANK_OFFSETS if banks else ()))]

    def stop(self, sig: signal.Signals, timeout_s: float) -> float:
        """Send `sig`; returns the seconds `txc up` took to exit. On a timeout, kills its
        whole session and fails."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError(f"txc up did not stop on {sig.name}:\n{self.output}") from None
        return time.monotonic() - t0

    def kill(self) -> None:
        """After a failed test: SIGTERM first (`txc up` stops its children, which run in
        sessions of their own that a SIGKILL of its session would not reach), then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(shutdown.STOP_BOUND_S + 10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
