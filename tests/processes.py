"""Real processes for end-to-end tests: coordinator nodes (`python -m coordinator serve`) and
demo participant services, each a subprocess that a test can SIGKILL and restart."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from coordinator import migrate
from coordinator.procs import Proc, node_env, peers_for
from tests.conftest import PgServer
from tests.helpers import free_port

TEST_SECRET = "test-secret"

# Timeouts for tests: short phase-2 backoff so recovery is quick; Raft at its defaults.
TEST_NODE_ENV = {
    "TXC_PHASE2_BACKOFF_INITIAL_S": "0.05",
    "TXC_PHASE2_BACKOFF_MAX_S": "0.5",
    "TXC_SWEEP_INTERVAL_S": "0.1",
    "TXC_PREPARE_TIMEOUT_S": "3",
    "TXC_LOG_LEVEL": "WARNING",
}


@dataclass
class Cluster:
    nodes: list[Proc] = field(default_factory=list)

    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def status(self, node: Proc) -> dict[str, object] | None:
        try:
            return httpx.get(node.url + "/v1/cluster", timeout=1).json()  # type: ignore[no-any-return]
        except (httpx.HTTPError, ValueError):
            return None

    def leader(self, timeout_s: float = 30.0) -> Proc:
        """The node that says it leads and is ready to serve (it has applied its term)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for n in self.nodes:
                if not n.alive:
                    continue
                with contextlib.suppress(httpx.HTTPError):
                    r = httpx.get(n.url + "/readyz", timeout=1)
                    st = self.status(n)
                    if r.status_code == 200 and st and st.get("role") in ("leader", None):
                        if st.get("mode") == "single-node" or st.get("leader_id") == st.get("id"):
                            return n
            time.sleep(0.05)
        raise AssertionError("no leader elected")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def start_cluster(
    pg: PgServer, tmp: Path, size: int = 3, extra_env: dict[str, str] | None = None
) -> Cluster:
    ports = [free_port() for _ in range(size)]
    peers = peers_for(ports)
    cluster = Cluster()
    for i, port in enumerate(ports):
        db = pg.new_database(f"node{i + 1}")
        migrate.upgrade(db, "coordinator")
        env = {
            **TEST_NODE_ENV,
            **node_env(i + 1, port, db, peers, TEST_SECRET, size),
            **(extra_env or {}),
        }
        node = Proc(
            f"node{i + 1}",
            ["-m", "coordinator", "serve"],
            env,
            f"http://127.0.0.1:{port}",
            tmp / f"node{i + 1}.log",
        )
        cluster.nodes.append(node.start())
    for n in cluster.nodes:
        n.wait_ready("/healthz")
    return cluster


@contextlib.contextmanager
def cluster_of(
    pg: PgServer, tmp: Path, size: int = 3, extra_env: dict[str, str] | None = None
) -> Iterator[Cluster]:
    c = start_cluster(pg, tmp, size, extra_env)
    try:
        yield c
    finally:
        c.stop()
