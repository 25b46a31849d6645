"""A throwaway MariaDB server from the distribution's package, in a data directory of ours,
for the tests and the demo (the MariaDB counterpart of `embedded_pg.py`).

Why our own process rather than the distribution's service: the tests and `txc up` need a
server they can start without systemd, on a free port, kill with SIGKILL and restart on the
same data (the crash tests), and stop for sure at the end. `mariadbd` runs as a child of
this process (as the current user; `--user=root` when that is root, which mariadbd otherwise
refuses), reads no option file (`--no-defaults`: nothing from /etc/mysql applies), and
keeps its socket, pid file and error log in the data directory.

Durability as in production: `innodb_flush_log_at_trx_commit=1`, and with `binlog=True`
a binary log with `sync_binlog=1` (then the binlog, not InnoDB alone, coordinates the
server's internal two-phase commit; see participant_sdk/README.md, "MariaDB XA quirks").

    server = EmbeddedMariaDB(Path("/tmp/x")).start()
    url = server.create_database("bank_c")  # mysql+pymysql://root@127.0.0.1:PORT/bank_c
    ...
    server.stop()
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from coordinator import shutdown
from coordinator.embedded_pg import free_port

log = logging.getLogger("txc.embedded_mariadb")

SERVER_USER = "root"  # mariadb-install-db creates root@localhost/127.0.0.1 without password
SERVER_NAMES = ("mariadbd", "mysqld")
INSTALL_NAMES = ("mariadb-install-db", "mysql_install_db")
SEARCH_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
INSTALL_TIMEOUT_S = 120.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0  # after SIGTERM, before SIGKILL
POLL_S = 0.05
MAX_CONNECTIONS = 400
BUFFER_POOL = "64M"  # small: tests and demos hold a few rows
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL
LOG_TAIL_CHARS = 3000
INSTALL_HINT = "install it with `apt-get install -y mariadb-server` (Debian/Ubuntu)"


class MariaDBNotInstalled(RuntimeError):
    """No MariaDB server binary on PATH or in the usual system directories."""


def _find(names: tuple[str, ...]) -> Path | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return Path(found)
        for d in SEARCH_DIRS:
            p = Path(d) / name
            if p.is_file() and os.access(p, os.X_OK):
                return p
    return None


def find_binaries() -> tuple[Path, Path]:
    """(server, install-db) binaries; MariaDBNotInstalled with what to do when missing."""
    server, install = _find(SERVER_NAMES), _find(INSTALL_NAMES)
    if server is None or install is None:
        missing = " and ".join(
            n for n, p in (("mariadbd/mysqld", server), ("mariadb-install-db", install)) if not p
        )
        raise MariaDBNotInstalled(f"MariaDB is not installed (no {missing} found): {INSTALL_HINT}")
    return server, install


def available() -> bool:
    try:
        find_binaries()
    except MariaDBNotInstalled:
        return False
    return True


def _running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class EmbeddedMariaDB:
    """One MariaDB server whose data lives in `data_dir`; `start()` initialises it on first
    use. `binlog`: run with a binary log (the configuration of a replicated server)."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    binlog: bool = False
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _forced_stop: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        if self.port == 0:
            self.port = free_port(self.host)

    # -- paths ---------------------------------------------------------------------------------

    @property
    def datadir(self) -> Path:
        return self.data_dir / "data"

    @property
    def socket_path(self) -> Path:
        return self.datadir / "mysqld.sock"

    @property
    def pidfile(self) -> Path:
        return self.datadir / "mysqld.pid"

    @property
    def logfile(self) -> Path:
        return self.data_dir / "mariadb.log"

    def url(self, database: str = "mysql") -> str:
        """A SQLAlchemy URL (PyMySQL driver) for one database of this server."""
        return f"mysql+pymysql://{SERVER_USER}@{self.host}:{self.port}/{database}"

    # -- life cycle ----------------------------------------------------------------------------

    def initialised(self) -> bool:
        return (self.datadir / "mysql").is_dir()

    def _log_tail(self) -> str:
        if not self.logfile.exists():
            return ""
        return self.logfile.read_text(errors="replace")[-LOG_TAIL_CHARS:]

    def _install(self, install: Path) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(install),
            "--no-defaults",
            f"--datadir={self.datadir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]
        if _running_as_root():
            cmd.append("--user=root")
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr).decode(errors="replace")[-LOG_TAIL_CHARS:]
            raise RuntimeError(f"mariadb-install-db failed ({proc.returncode}): {out}")

    def _args(self, server: Path) -> list[str]:
        args = [
            str(server),
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.pidfile}",
            f"--log-error={self.logfile}",
            f"--tmpdir={self.data_dir}",
            f"--max-connections={MAX_CONNECTIONS}",
            f"--innodb-buffer-pool-size={BUFFER_POOL}",
            "--innodb-flush-log-at-trx-commit=1",
            "--character-set-server=utf8mb4",
            "--skip-name-resolve",
            "--performance-schema=OFF",
        ]
        if self.binlog:
            args += [
                f"--log-bin={self.datadir / 'binlog'}",
                "--server-id=1",
                "--binlog-format=ROW",
                "--sync-binlog=1",
            ]
        if _running_as_root():
            args.append("--user=root")
        return args

    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        pid = self._pid_from_file()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _pid_from_file(self) -> int | None:
        try:
            return int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> EmbeddedMariaDB:
        """Initialise on first use, then start and wait until it answers queries."""
        server, install = find_binaries()
        if len(str(self.socket_path)) > SOCKET_PATH_MAX:
            raise ValueError(f"data directory path too long for a socket: {self.socket_path}")
        if not self.initialised():
            self._install(install)
        if self.running():
            self.stop()  # left behind by a killed run: restart it with this run's settings
        with open(self.logfile, "ab") as logf:
            self._proc = subprocess.Popen(
                self._args(server),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C meant for the parent does not reach it; the
                # parent stops it (stop()) when it is done.
                start_new_session=True,
            )
        # The last resort of coordinator/shutdown.py: SIGKILL, not waited for (InnoDB's
        # crash recovery at the next start repairs the rest).
        self._forced_stop = shutdown.on_forced_stop("MariaDB", self._kill_now)
        self._wait_ready()
        log.info("embedded MariaDB running on %s:%s (%s)", self.host, self.port, self.datadir)
        return self

    def _wait_ready(self) -> None:
        import pymysql

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"mariadbd exited ({self._proc.returncode}) while starting:\n{self._log_tail()}"
                )
            try:
                conn = pymysql.connect(
                    host=self.host,
                    port=self.port,
                    user=SERVER_USER,
                    connect_timeout=1,
                    ssl_disabled=True,
                )
                conn.close()
                return
            except pymysql.err.OperationalError as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"MariaDB did not accept connections on {self.port}: {e}\n"
                        f"{self._log_tail()}"
                    ) from e
                time.sleep(POLL_S)

    def _signal(self, sig: signal.Signals) -> int | None:
        pid = self._proc.pid if self._proc is not None else self._pid_from_file()
        if pid is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        return pid

    def _wait_gone(self, pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid:
                if self._proc.poll() is not None:
                    return True
            else:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return True
            time.sleep(POLL_S)
        return False

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL after STOP_TIMEOUT_S."""
        if self._forced_stop is not None:
            shutdown.forget(self._forced_stop)
            self._forced_stop = None
        if not self.running():
            self._proc = None
            return
        pid = self._signal(signal.SIGTERM)
        if pid is not None and not self._wait_gone(pid, STOP_TIMEOUT_S):
            log.warning("MariaDB %s did not stop in %ss: killing it", pid, STOP_TIMEOUT_S)
            self._signal(signal.SIGKILL)
            self._wait_gone(pid, STOP_TIMEOUT_S)
        self._proc = None

    def _kill_now(self) -> None:
        """The last resort of coordinator/shutdown.py: SIGKILL, not waited for (InnoDB's
        crash recovery at the next start repairs the rest)."""
        self._signal(signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL: a server crash (what InnoDB's crash recovery then faces)."""
        pid = self._signal(signal.SIGKILL)
        if pid is not None:
            self._wait_gone(pid, STOP_TIMEOUT_S)
        self._proc = None

    def create_database(self, name: str) -> str:
        """Create `name` unless it exists; returns its SQLAlchemy URL."""
        create_database(self.host, self.port, name)
        return self.url(name)


def create_database(host: str, port: int, name: str, user: str = SERVER_USER) -> None:
    import pymysql

    if not name.replace("_", "").isalnum() or len(name) > 64:
        raise ValueError(f"database name must be alphanumeric or '_', at most 64: {name!r}")
    conn = pymysql.connect(host=host, port=port, user=user, ssl_disabled=True, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
