"""`txc up`: the one command that starts everything on one machine.

Embedded PostgreSQL (or the server `--database-url` names), one database per coordinator
node and per demo participant, migrations, the coordinator, the demo banks; then it waits.
It supervises what it started (coordinator/supervise.py): a process that dies is restarted
with backoff, `txc node stop|start N` takes one down and back on purpose. Ctrl-C (or SIGTERM)
stops the processes it started and the database, leaving nothing running, within the bound
of coordinator/shutdown.py whatever state they are in.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import sys
import time
from pathlib import Path

from coordinator import embedded_mariadb, migrate, shutdown
from coordinator.db import normalise_url
from coordinator.embedded_mariadb import EmbeddedMariaDB
from coordinator.embedded_pg import EmbeddedPostgres, create_database
from coordinator.procs import Proc, node_env, peers_for, stop_all
from coordinator.supervise import Supervisor

READY_TIMEOUT_S = 60.0
DEMO_BANKS = (("bank-a", "bank_a"), ("bank-b", "bank_b"))
MARIADB_BANK = ("bank-c", "bank_c")  # with --demo-mysql: a third bank, on MariaDB


def _server_url_for(server_url: str, database: str) -> str:
    base, _, _ = normalise_url(server_url).rpartition("/")
    return f"{base}/{database}"


CREDENTIAL_NAMES = (
    "cluster",
    "participant_secret",
    "admin",
    "client",
    "participant",
    "read",
    *(f"secret:{name}" for name, _ in (*DEMO_BANKS, MARIADB_BANK)),
)


def _credentials(data_dir: Path) -> dict[str, str]:
    """Development credentials, generated once and kept (mode 600) in the data directory:
    the cluster secret, one secret per demo participant (its registry entry), the shared
    participant secret (only for `--no-demo`, where nobody is registered yet), and one API
    token per role. A data directory of an earlier release gets the names it lacks.
    `credentials.env` beside it exports the API tokens for a shell."""
    path = data_dir / "credentials.json"
    creds: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    missing = [name for name in CREDENTIAL_NAMES if name not in creds]
    if missing:
        creds |= {name: secrets.token_urlsafe(24) for name in missing}
        path.write_text(json.dumps(creds, indent=2))
        path.chmod(0o600)
    env_file = data_dir / "credentials.env"
    env_file.write_text(
        f"export TXC_API_TOKEN={creds['admin']}  # admin: the txc CLI and the dashboard\n"
        f"export TXC_CLIENT_TOKEN={creds['client']}  # begin, commit, abort\n"
        f"export TXC_PARTICIPANT_API_TOKEN={creds['participant']}  # enlist, outcome\n"
        f"export TXC_READ_TOKEN={creds['read']}  # read-only dashboard\n"
    )
    env_file.chmod(0o600)
    return creds


def _registry(data_dir: Path, creds: dict[str, str], banks: list[tuple[str, int]]) -> Path:
    """The participant registry every node reads (coordinator/participants.py): each demo
    bank's name, its own secret and its URL, so that no bank can act as the other."""
    path = data_dir / "participants.toml"
    entries = "".join(
        f'[participants.{name}]\nsecrets = ["{creds["secret:" + name]}"]\n'
        f'urls = ["http://127.0.0.1:{port}/txc"]\n\n'
        for name, port in banks
    )
    path.write_text("# Written by `txc up` at every start.\n\n" + entries)
    path.chmod(0o600)
    return path


def _bank_port(base: int, i: int) -> int:
    return base + 101 + i


def _api_tokens(creds: dict[str, str]) -> str:
    return ",".join(f"{role}={creds[role]}" for role in ("admin", "client", "participant", "read"))


def _spawn(name: str, args: list[str], env: dict[str, str], port: int, log_dir: Path) -> Proc:
    url = f"http://127.0.0.1:{port}"
    return Proc(name, args, env, url, log_dir / f"{name}.log", new_session=True).start()


class UpError(Exception):
    """A request `txc up` cannot serve (one line for the user, exit code 2)."""


def _start_mariadb(data_dir: Path) -> EmbeddedMariaDB:
    """The demo's MariaDB server, from the machine's own package (not bundled: a newcomer
    without it gets the line that installs it)."""
    if not embedded_mariadb.available():
        raise UpError(f"--demo-mysql needs a MariaDB server: {embedded_mariadb.INSTALL_HINT}")
    print(f"starting embedded MariaDB in {data_dir / 'mariadb'} ...", flush=True)
    return EmbeddedMariaDB(data_dir / "mariadb").start()


def _say(line: str) -> None:
    print(time.strftime("%H:%M:%S ") + line, flush=True)


def up(args: argparse.Namespace) -> int:
    if args.demo_mysql and args.no_demo:
        print("txc up: --demo-mysql adds a demo bank: not with --no-demo", file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir).resolve()
    log_dir = data_dir / "logs"
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)  # the user's alone (as root, the embedded PostgreSQL opens it to x)
    log_dir.mkdir(exist_ok=True)
    pg: EmbeddedPostgres | None = None
    mdb: EmbeddedMariaDB | None = None
    children: list[Proc] = []
    supervisor: Supervisor | None = None

    def on_signal(_sig: int, _frame: object) -> None:
        shutdown.request_stop()
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
        demo = [] if args.no_demo else [*DEMO_BANKS]
        if args.demo_mysql:
            mdb = _start_mariadb(data_dir)
            demo.append(MARIADB_BANK)
        nodes = max(1, args.nodes)
        creds = _credentials(data_dir)
        secret = creds["cluster"]
        ports = [args.port + i for i in range(nodes)]
        peers = peers_for(ports)
        banks = [(name, _bank_port(args.port, i)) for i, (name, _) in enumerate(demo)]
        # With demo banks, each has its own identity; without, nobody is registered and
        # participants the user starts share one secret (TXC_PARTICIPANT_TOKEN).
        participant_env = (
            {"TXC_PARTICIPANTS_FILE": str(_registry(data_dir, creds, banks))}
            if banks
            else {"TXC_PARTICIPANT_TOKEN": creds["participant_secret"]}
        )
        for i, port in enumerate(ports):
            node_db = f"txc_node{i + 1}"
            create_database(server_url, node_db)
            node_url = _server_url_for(server_url, node_db)
            migrate.upgrade(node_url, "coordinator")
            env = (
                node_env(i + 1, port, node_url, peers, secret, nodes)
                | {"TXC_API_TOKENS": _api_tokens(creds)}
                | participant_env
            )
            children.append(
                _spawn(f"node{i + 1}", ["-m", "coordinator", "serve"], env, port, log_dir)
            )
        coordinator_url = children[0].url
        nodes_started = list(children)
        deadline = time.monotonic() + READY_TIMEOUT_S
        for c in children:
            c.wait_ready("/readyz", deadline - time.monotonic())
        bank_urls: list[str] = []
        if demo:
            for i, (name, db) in enumerate(demo):
                if (name, db) == MARIADB_BANK and mdb is not None:
                    db_url = mdb.create_database(db)  # the bank creates its own tables
                else:
                    create_database(server_url, db)
                    db_url = _server_url_for(server_url, db)
                    migrate.upgrade(db_url, "participant")
                port = _bank_port(args.port, i)
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
                            ",".join(c.url for c in nodes_started),
                            "--port",
                            str(port),
                        ],
                        # Secrets by environment, never on the command line (which `ps`
                        # shows every local user).
                        {"TXC_PARTICIPANT_TOKEN": creds["secret:" + name]},
                        port,
                        log_dir,
                    )
                )
                bank_urls.append(children[-1].url)
            for c in children:
                if not c.name.startswith("node"):
                    c.wait_ready("/healthz", deadline - time.monotonic())
        supervisor = Supervisor(children, data_dir, say=_say)  # before "up": `txc node` works
        print()
        print("txc is up.")
        for c in children:
            if c.name.startswith("node"):
                print(f"  {c.name:<14} {c.url}")
        print(f"  API            {coordinator_url}/v1/transactions (any node)")
        print(f"  dashboard      {coordinator_url}/dashboard")
        print(f"  OpenAPI docs   {coordinator_url}/docs")
        print(f"  cluster        {coordinator_url}/v1/cluster")
        print(f"  metrics        {coordinator_url}/metrics")
        for (name, db), url in zip(demo, bank_urls, strict=True):
            on = "MariaDB" if (name, db) == MARIADB_BANK else "PostgreSQL"
            print(f"  demo {name:<9} {url}/accounts ({on})")
        for to in bank_urls[1:]:
            print(
                f"  demo transfer  python -m txc_demo.transfer --coordinator-url {coordinator_url} "
                f"--from-bank {bank_urls[0]} --from-account alice "
                f"--to-bank {to} --to-account bob --amount 10"
            )
        print(f"  credentials    source {data_dir / 'credentials.env'}   (development tokens)")
        print(f"  admin token    {creds['admin']}   (dashboard sign-in, txc CLI)")
        print(f"  logs           {log_dir}")
        print(f"  data           {data_dir} (remove it to start afresh)")
        print(
            "  node control   txc node list|stop N|start N"
            f"{'' if args.data_dir == '.txc' else ' --data-dir ' + str(args.data_dir)}"
        )
        print("A process that dies is restarted. Ctrl-C stops everything.", flush=True)
        supervisor.run()
        return 0  # not reached: run() returns only by an exception
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    except UpError as e:
        print(f"txc up: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        print(f"txc up failed: {e}", file=sys.stderr)
        return 1
    finally:
        if supervisor is not None:
            supervisor.stop_all()
        else:
            stop_all(children)
        if mdb is not None:
            mdb.stop()
        if pg is not None:
            pg.stop()
        print("stopped.", flush=True)
