"""What the benchmarks start on this machine: credentials, coordinator nodes, demo banks (and
the baseline banks), each a separate process, all on one embedded PostgreSQL server.

Shared by `txc bench transfers` and `txc bench raft`. Nothing here measures anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from coordinator import migrate
from coordinator.db import normalise_url
from coordinator.embedded_pg import EmbeddedPostgres, create_database, free_port
from coordinator.procs import Proc, node_env, peers_for, stop_all

READY_TIMEOUT_S = 60.0
LEADER_TIMEOUT_S = 30.0
LEADER_POLL_S = 0.02
PROBE_TIMEOUT_S = 1.0
SEED_BATCH = 1_000  # accounts inserted per statement when seeding a bank
ROLES = ("admin", "client", "participant", "read")


BANKS = ("bank-a", "bank-b")


@dataclass(frozen=True)
class Credentials:
    """Development credentials generated per run, as `txc up` does: the cluster secret, one
    API token per role, and each bank's own secret in a participant registry the nodes read
    (what a production deployment runs). With `registry=False` (`--shared-secret`), the
    earlier model instead: one participant secret shared by the nodes and every bank."""

    cluster: str
    participant_secret: str
    tokens: dict[str, str]
    bank_secrets: dict[str, str]
    registry: bool = True

    @classmethod
    def generate(cls, *, registry: bool = True) -> Credentials:
        return cls(
            cluster=secrets.token_urlsafe(24),
            participant_secret=secrets.token_urlsafe(24),
            tokens={role: secrets.token_urlsafe(24) for role in ROLES},
            bank_secrets={bank: secrets.token_urlsafe(24) for bank in BANKS},
            registry=registry,
        )

    def api_tokens(self) -> str:
        return ",".join(f"{role}={tok}" for role, tok in self.tokens.items())

    def write_registry(self, path: Path, bank_urls: dict[str, str]) -> str:
        """The participant registry (mode 600) naming each bank at its protocol URL."""
        assert self.registry and set(bank_urls) <= set(self.bank_secrets)
        path.write_text(
            "".join(
                f'[participants.{bank}]\nsecrets = ["{self.bank_secrets[bank]}"]\n'
                f'urls = ["{url}"]\n\n'
                for bank, url in bank_urls.items()
            )
        )
        path.chmod(0o600)
        return str(path)


def dsn(url: str) -> str:
    """A psycopg DSN from a SQLAlchemy URL."""
    return normalise_url(url).replace("postgresql+psycopg://", "postgresql://")


def cleanup(pg: EmbeddedPostgres, root: Path, *, keep: bool) -> None:
    """Stop the run's PostgreSQL; remove its folder unless `--keep` asked to look at it."""
    pg.stop()
    if keep:
        print(f"kept {root} (logs and PostgreSQL data)")
    else:
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(pg: EmbeddedPostgres, name: str) -> str:
    """Drop `name` if a previous run left it, create it empty; returns its SQLAlchemy URL."""
    with psycopg.connect(dsn(pg.url()), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    create_database(pg.url(), name)
    return pg.url(name)


def start_nodes(
    pg: EmbeddedPostgres,
    root: Path,
    prefix: str,
    size: int,
    creds: Credentials | None,
    *,
    module_args: list[str] | None = None,
    raft_when_single: bool = False,
    extra_env: dict[str, str] | None = None,
    participants_file: str | None = None,
) -> list[Proc]:
    """Start `size` coordinator nodes, each with a fresh database `{prefix}_node{i}`.

    `size == 1` runs the standalone node (no Raft) unless `raft_when_single`, which makes it a
    Raft group of one member. Returns once every process is up (not necessarily led)."""
    ports = [free_port() for _ in range(size)]
    peers = peers_for(ports)
    cluster_secret = creds.cluster if creds else secrets.token_urlsafe(24)
    nodes: list[Proc] = []
    for i, port in enumerate(ports):
        url = fresh_database(pg, f"{prefix}_node{i + 1}")
        migrate.upgrade(url, "coordinator")
        env = node_env(i + 1, port, url, peers, cluster_secret, size)
        if size == 1 and raft_when_single:
            env |= {"TXC_PEERS": peers, "TXC_RAFT_ID": "1", "TXC_CLUSTER_SECRET": cluster_secret}
        env |= {"TXC_LOG_LEVEL": "WARNING"}
        if creds is not None:
            env |= {"TXC_API_TOKENS": creds.api_tokens()}
            if participants_file is not None:
                env |= {"TXC_PARTICIPANTS_FILE": participants_file}
            else:
                env |= {"TXC_PARTICIPANT_TOKEN": creds.participant_secret}
        env |= extra_env or {}
        args = module_args or ["-m", "coordinator", "serve"]
        name = f"{prefix}-node{i + 1}"
        nodes.append(Proc(name, args, env, f"http://127.0.0.1:{port}", root / f"{name}.log"))
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready("/healthz", READY_TIMEOUT_S)
    except BaseException:  # Ctrl-C, SIGTERM or a node that failed: the caller never sees them
        stop_all(nodes)
        raise
    return nodes


def prepare_bank_database(pg: EmbeddedPostgres, name: str, accounts: int, balance: int) -> str:
    """A fresh bank database: the SDK's tables (participant migrations), the bank's tables,
    and `accounts` accounts holding `balance` each (the bank seeds only an empty table)."""
    from sqlalchemy import create_engine

    from txc_demo import bank

    url = fresh_database(pg, name)
    migrate.upgrade(url, "participant")
    engine = create_engine(url)
    try:
        bank.metadata.create_all(engine, checkfirst=True)
        with engine.begin() as conn:
            for start in range(0, accounts, SEED_BATCH):
                rows = [
                    {"name": account_name(i), "balance": balance}
                    for i in range(start, min(accounts, start + SEED_BATCH))
                ]
                conn.execute(bank.accounts.insert(), rows)
        bank.init_database(engine)  # creates what is missing; seeds nothing (not empty)
    finally:
        engine.dispose()
    return url


def account_name(i: int) -> str:
    return f"acct{i:06d}"


@dataclass(frozen=True)
class BankState:
    total: int
    accounts: int
    prepared: int  # PREPAREd transactions still in doubt in this database
    ledger_rows: int


def _one(conn: psycopg.Connection[Any], sql: str) -> tuple[Any, ...]:
    row = conn.execute(sql).fetchone()  # type: ignore[call-overload]
    assert row is not None, sql
    return tuple(row)


def bank_state(url: str) -> BankState:
    with psycopg.connect(dsn(url)) as c:
        total, n = _one(c, "SELECT coalesce(sum(balance), 0), count(*) FROM bank_account")
        (prepared,) = _one(
            c, "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
        )
        (ledger,) = _one(c, "SELECT count(*) FROM bank_ledger")
    return BankState(int(total), int(n), int(prepared), int(ledger))


STATS_FLUSH_S = 1.5  # PostgreSQL's statistics reach pg_stat_database within about 1 s


def database_transactions(pg: EmbeddedPostgres) -> dict[str, int]:
    """Transactions (committed and rolled back) so far, by group: the coordinator nodes'
    databases and the banks'."""
    groups = {"coordinator nodes": 0, "banks": 0}
    with psycopg.connect(dsn(pg.url())) as c:
        rows = c.execute(
            "SELECT datname, xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname LIKE 'bench%'"
        ).fetchall()
    for name, n in rows:
        groups["coordinator nodes" if "_node" in name else "banks"] += int(n)
    return groups


def vacuum_and_checkpoint(pg: EmbeddedPostgres, databases: list[str]) -> None:
    """Level the field between scenarios: no dead tuples left by the previous one, and no
    checkpoint owed that would land in the middle of the next measurement."""
    for url in databases:
        with psycopg.connect(dsn(url), autocommit=True) as c:
            c.execute("VACUUM ANALYZE bank_account")
            c.execute("VACUUM ANALYZE bank_ledger")
    with psycopg.connect(dsn(pg.url()), autocommit=True) as c:
        c.execute("CHECKPOINT")


def start_bank(
    name: str,
    db_url: str,
    root: Path,
    *,
    baseline: bool,
    coordinator_urls: list[str] | None = None,
    creds: Credentials | None = None,
    recovery_interval_s: float | None = None,
    port: int | None = None,
) -> Proc:
    """A demo bank process (`txc_demo.bank`), or its baseline twin (same SQL, autocommit, no
    coordinator: `coordinator.bench.baseline_bank`). With a registry, at the `port` it is
    registered at, signing with its own secret."""
    port = port or free_port()
    env: dict[str, str] = {}
    if baseline:
        args = ["-m", "coordinator.bench.baseline_bank", "--name", name]
    else:
        assert coordinator_urls, "a txc bank needs the coordinator's URLs"
        args = ["-m", "txc_demo.bank", "--name", name]
        args += ["--coordinator-url", ",".join(coordinator_urls)]
        # By environment: a command line is visible to every local user.
        if creds is not None and creds.registry:
            env["TXC_PARTICIPANT_TOKEN"] = creds.bank_secrets[name]  # it signs its calls
        elif creds is not None:
            env["TXC_API_TOKEN"] = creds.tokens["participant"]
            env["TXC_PARTICIPANT_TOKEN"] = creds.participant_secret
        else:
            args += ["--development"]  # --no-auth: an open group on loopback
        if recovery_interval_s is not None:
            args += ["--recovery-interval", str(recovery_interval_s)]
    args += ["--database-url", db_url, "--port", str(port)]
    proc_name = f"{name}-baseline" if baseline else name
    proc = Proc(proc_name, args, env, f"http://127.0.0.1:{port}", root / f"{proc_name}.log")
    try:
        proc.start().wait_ready("/healthz", READY_TIMEOUT_S)
    except BaseException:  # as in start_nodes: stopped here, or by nobody
        proc.stop()
        raise
    return proc


async def find_leader(
    session: aiohttp.ClientSession,
    nodes: list[Proc],
    headers: dict[str, str] | None = None,
    timeout_s: float = LEADER_TIMEOUT_S,
) -> Proc:
    """The node that says it leads and is ready (a standalone node is its own leader)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for n in nodes:
            if not n.alive:
                continue
            try:
                probe = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
                async with session.get(n.url + "/v1/cluster", headers=headers, timeout=probe) as r:
                    st = await r.json()
                async with session.get(n.url + "/readyz", timeout=probe) as r:
                    ready = r.status == 200
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
            leads = st.get("role") == "leader" or st.get("mode") != "raft"
            if leads and ready:
                return n
        await asyncio.sleep(LEADER_POLL_S)
    raise RuntimeError(f"no ready leader among {[n.name for n in nodes]} in {timeout_s:.0f}s")


def machine(pg: EmbeddedPostgres) -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with psycopg.connect(dsn(pg.url())) as c:
        version = str(_one(c, "SHOW server_version")[0])
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem_gb = round(kb / 1024 / 1024, 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "postgresql": version,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
