"""`txc up`: the one command that starts everything on one machine.

Embedded PostgreSQL (or the server `--database-url` names), one database per coordinator
node and per demo participant, migrations, the coordinator, the demo banks; then it waits.
Ctrl-C (or SIGTERM) stops the processes it started and the database, leaving nothing running.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from coordinator import migrate
from coordinator.db import normalise_url
from coordinator.embedded_pg import EmbeddedPostgres, create_database

READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
DEMO_BANKS = (("bank-a", "bank_a"), ("bank-b", "bank_b"))


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path


def _server_url_for(server_url: str, database: str) -> str:
    base, _, _ = normalise_url(server_url).rpartition("/")
    return f"{base}/{database}"


def _wait_ready(child: Child, path: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            tail = (
                child.log_path.read_text(errors="replace")[-2000:]
                if child.log_path.exists()
                else ""
            )
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(child.url + path, timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} not ready at {child.url} after {READY_TIMEOUT_S:.0f}s")


def _cluster_secret(data_dir: Path) -> str:
    """A development cluster secret, generated once and kept in the data directory."""
    path = data_dir / "cluster-secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _spawn(name: str, args: list[str], env: dict[str, str], url: str, log_dir: Path) -> Child:
    log_path = log_dir / f"{name}.log"
    out = open(log_path, "ab")
    proc = subprocess.Popen(
        [sys.executable, *args],
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
    )
    return Child(name, proc, url, log_path)


def _stop(children: list[Child]) -> None:
    for c in reversed(children):
        if c.proc.poll() is None:
            c.proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for c in reversed(children):
        try:
            c.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()


def up(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    pg: EmbeddedPostgres | None = None
    children: list[Child] = []
    stopping = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        if args.database_url:
            server_url = normalise_url(args.database_url)
            print(f"using PostgreSQL at {server_url.split('@')[-1]}")
        else:
            print(f"starting embedded PostgreSQL in {data_dir / 'postgres'} ...", flush=True)
            pg = EmbeddedPostgres(data_dir / "postgres").start()
            server_url = pg.url()
        nodes = max(1, args.nodes)
        secret = _cluster_secret(data_dir)
        ports = [args.port + i for i in range(nodes)]
        peers = ",".join(f"{i + 1}=http://127.0.0.1:{p}" for i, p in enumerate(ports))
        for i, port in enumerate(ports):
            node_db = f"txc_node{i + 1}"
            create_database(server_url, node_db)
            node_url = _server_url_for(server_url, node_db)
            migrate.upgrade(node_url, "coordinator")
            env = {
                "TXC_NODE_ID": f"node{i + 1}",
                "TXC_PORT": str(port),
                "TXC_DATABASE_URL": node_url,
            }
            if nodes > 1:
                env |= {"TXC_PEERS": peers, "TXC_RAFT_ID": str(i + 1), "TXC_CLUSTER_SECRET": secret}
            children.append(
                _spawn(
                    f"node{i + 1}",
                    ["-m", "coordinator", "serve"],
                    env,
                    f"http://127.0.0.1:{port}",
                    log_dir,
                )
            )
        coordinator_url = children[0].url
        deadline = time.monotonic() + READY_TIMEOUT_S
        for c in children:
            _wait_ready(c, "/readyz", deadline)
        bank_urls: list[str] = []
        if not args.no_demo:
            for i, (name, db) in enumerate(DEMO_BANKS):
                create_database(server_url, db)
                db_url = _server_url_for(server_url, db)
                migrate.upgrade(db_url, "participant")
                port = args.port + 101 + i
                url = f"http://127.0.0.1:{port}"
                children.append(
                    _spawn(
                        name,
                        [
                            "-m",
                            "txc_demo.bank",
                            "--name",
                            name,
                            "--database-url",
                            db_url,
                            "--coordinator-url",
                            coordinator_url,
                            "--port",
                            str(port),
                        ],
                        {},
                        url,
                        log_dir,
                    )
                )
                bank_urls.append(url)
            for c in children:
                if not c.name.startswith("node"):
                    _wait_ready(c, "/healthz", deadline)
        print()
        print("txc is up.")
        for c in children:
            if c.name.startswith("node"):
                print(f"  {c.name:<14} {c.url}")
        print(f"  API            {coordinator_url}/v1/transactions (any node)")
        print(f"  OpenAPI docs   {coordinator_url}/docs")
        print(f"  cluster        {coordinator_url}/v1/cluster")
        print(f"  metrics        {coordinator_url}/metrics")
        for (name, _), url in zip(DEMO_BANKS, bank_urls, strict=False):
            print(f"  demo {name:<9} {url}/accounts")
        if bank_urls:
            print(
                f"  demo transfer  python -m txc_demo.transfer --coordinator-url {coordinator_url} "
                f"--bank-a {bank_urls[0]} --bank-b {bank_urls[1]} --from alice --to bob --amount 10"
            )
        print(f"  logs           {log_dir}")
        print(f"  data           {data_dir} (remove it to start afresh)")
        print("Ctrl-C stops everything.", flush=True)
        while True:
            for c in children:
                if c.proc.poll() is not None:
                    print(
                        f"warning: {c.name} exited with {c.proc.returncode}; see {c.log_path}",
                        flush=True,
                    )
                    children.remove(c)
                    break
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    except Exception as e:
        print(f"txc up failed: {e}", file=sys.stderr)
        return 1
    finally:
        _stop(children)
        if pg is not None:
            pg.stop()
        if not stopping:
            pass
        print("stopped.", flush=True)
