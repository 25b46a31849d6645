"""Child processes that `txc up`, the benchmarks and the end-to-end tests start and stop:
coordinator nodes and participant services, each a Python module run in its own process."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from coordinator import shutdown

READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0


@dataclass
class Proc:
    name: str
    args: list[str]  # after `python`
    env: dict[str, str]
    url: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    new_session: bool = False  # True: Ctrl-C at the terminal reaches only the parent
    ca_file: str | None = None  # a CA bundle for https URLs with a private CA
    _forced_stop: int | None = field(default=None, init=False, repr=False)

    def start(self) -> Proc:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        self._forget()
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *self.args],
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.new_session,
            )
        self._forced_stop = shutdown.on_forced_stop(self.name, self._kill_now)
        return self

    def _kill_now(self) -> None:
        """The last resort (`coordinator.shutdown`): SIGKILL without waiting."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)

    def _forget(self) -> None:
        if self._forced_stop is not None:
            shutdown.forget(self._forced_stop)
            self._forced_stop = None

    def kill(self) -> None:
        """SIGKILL: no chance to flush anything or say goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(STOP_GRACE_S)
        self._forget()

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def stop(self) -> None:
        self.terminate()
        self.wait_stopped()

    def wait_stopped(self, deadline: float | None = None) -> None:
        if self.proc is None:
            return
        deadline = deadline or time.monotonic() + STOP_GRACE_S
        try:
            self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
        self._forget()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def wait_ready(self, path: str = "/readyz", timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True
        )
        while time.monotonic() < deadline:
            if not self.alive:
                code = self.proc.returncode if self.proc else None
                raise RuntimeError(f"{self.name} exited with {code}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + path, timeout=1, verify=verify).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.name} not ready at {self.url} after {timeout_s:.0f}s:\n{self.log_tail()}"
        )


def stop_all(procs: list[Proc]) -> None:
    """Terminate in reverse start order, then wait for all within one grace period."""
    for p in reversed(procs):
        p.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for p in reversed(procs):
        p.wait_stopped(deadline)


def node_env(
    index: int, port: int, database_url: str, peers: str, secret: str, size: int
) -> dict[str, str]:
    """The environment of coordinator node `index` (1-based) of a group of `size`."""
    env = {"TXC_NODE_ID": f"node{index}", "TXC_PORT": str(port), "TXC_DATABASE_URL": database_url}
    if size > 1:
        env |= {"TXC_PEERS": peers, "TXC_RAFT_ID": str(index), "TXC_CLUSTER_SECRET": secret}
    return env


def peers_for(ports: list[int], host: str = "127.0.0.1") -> str:
    return ",".join(f"{i + 1}=http://{host}:{p}" for i, p in enumerate(ports))
