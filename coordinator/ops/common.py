"""What the operator commands share: exit codes, database engines, a small read-only client
of the coordinator's HTTP API, and time formatting."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, ProgrammingError

from coordinator.db import normalise_url

# Codes 0-5 are `coordinator.cli`'s (0 ok, 1 failed, 2 usage, 3 not found, 4 conflict,
# 5 unavailable). The operator commands add two:
EXIT_ATTENTION = 6  # a dry run would change something; an audit or a check found problems
EXIT_IN_DOUBT = 7  # `recover`: prepared work is still waiting for an undecided transaction

HTTP_TIMEOUT_S = 10.0
PAGE_LIMIT = 200  # transactions per page when listing (the API caps it at list_page_max)
MAX_LISTED = 100_000  # bound on the transactions one audit reads per participant


class OpsError(Exception):
    """A failure with the exit code it maps to (converted to the CLI's CliError)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def sync_url(url: str) -> str:
    return normalise_url(url)


def make_engine(url: str, *, read_only: bool = True) -> Engine:
    """A small engine for one command. Read-only engines set `default_transaction_read_only`,
    so a bug in an inspection command cannot write to a node's or a participant's database."""
    options = "-c synchronous_commit=on"
    if read_only:
        options += " -c default_transaction_read_only=on"
    return create_engine(
        sync_url(url),
        pool_size=2,
        max_overflow=2,
        pool_pre_ping=True,
        connect_args={"options": options, "connect_timeout": 10},
    )


def is_mysql_url(url: str) -> bool:
    """A MariaDB/MySQL participant database (mysql://, mariadb://, mysql+pymysql://, ...)."""
    from participant_sdk.mysql_engine import is_mysql_url as is_mysql

    return is_mysql(url)


def participant_engine(url: str, *, read_only: bool = True) -> Engine:
    """`make_engine` for a participant's database, PostgreSQL or MariaDB/MySQL. A read-only
    MariaDB session is `SET SESSION TRANSACTION READ ONLY` (every statement's transaction,
    autocommit ones too, refuses to write)."""
    if not is_mysql_url(url):
        return make_engine(url, read_only=read_only)
    from participant_sdk.mysql_engine import create_engine as mysql_engine

    connect_args: dict[str, Any] = {"connect_timeout": 10}
    if read_only:
        connect_args["init_command"] = "SET SESSION TRANSACTION READ ONLY"
    return mysql_engine(
        url, pool_size=2, max_overflow=2, pool_pre_ping=True, connect_args=connect_args
    )


@contextlib.contextmanager
def read_node(database_url: str, check_table: str = "txc_log") -> Iterator[Connection]:
    """One consistent, read-only look at a coordinator node's database: a REPEATABLE READ
    READ ONLY transaction, refused with exit 3 when it is not a node's database (no
    `check_table`) and exit 5 when the database cannot be read."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn, conn.begin():
            conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            if conn.execute(text(f"SELECT to_regclass('{check_table}')")).scalar() is None:
                raise OpsError(3, f"no {check_table} table: not a coordinator node's database")
            yield conn
    except DBAPIError as e:
        if isinstance(e, ProgrammingError):
            raise OpsError(3, f"not a coordinator node's database: {e.orig}") from None
        raise OpsError(5, f"cannot read the node's database: {e.orig}") from None
    finally:
        engine.dispose()


def redact(url: str) -> str:
    """A database URL without its password, for output."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable url>"


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return (
        datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def parse_iso(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def age(ts: float | None, now: float | None = None) -> str:
    """'42s', '3m', '5h', '2d' (for tables)."""
    if ts is None:
        return "-"
    s = max(0.0, (now if now is not None else time.time()) - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit}"
    return f"{int(s)}s"


class Coordinator:
    """Read calls to a coordinator group: tries each node URL in turn, follows `Txc-Leader`
    once. Only GETs: nothing here can change the coordinator's state."""

    def __init__(self, urls: str, token: str | None = None) -> None:
        self.urls = [u.strip().rstrip("/") for u in urls.split(",") if u.strip()]
        if not self.urls:
            raise OpsError(2, "a coordinator URL is required")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(headers=headers, timeout=HTTP_TIMEOUT_S)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str, params: dict[str, Any] | None = None) -> tuple[int, Any]:
        """(status, JSON body) from the first node that answers with something else than a
        network error or a 503; raises OpsError(5) when none does."""
        problems = []
        for base in self.urls:
            try:
                r = self.http.get(base + path, params=params)
                leader = r.headers.get("txc-leader")
                if r.status_code == 503 and leader and leader.rstrip("/") != base:
                    r = self.http.get(leader.rstrip("/") + path, params=params)
            except httpx.HTTPError as e:
                problems.append(f"{base}: {type(e).__name__}: {e}")
                continue
            if r.status_code == 503:
                problems.append(f"{base}: 503 {r.text[:200]}")
                continue
            if r.status_code in (401, 403):
                raise OpsError(2, f"{base}: {r.status_code}: check --token / TXC_API_TOKEN")
            try:
                body = r.json()
            except ValueError:
                body = {"error": {"code": "http_error", "message": r.text[:300]}}
            return r.status_code, body
        raise OpsError(5, "no coordinator node answered: " + "; ".join(problems))

    def transaction(self, txid: str) -> dict[str, Any] | None:
        """The transaction, or None when the coordinator has no record of it (404)."""
        status, body = self.get(f"/v1/transactions/{txid}")
        if status == 404:
            return None
        if status != 200:
            raise OpsError(1, f"GET /v1/transactions/{txid}: {status} {body}")
        return body  # type: ignore[no-any-return]

    def transactions_of(
        self, participant: str, max_age_s: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every transaction that enlisted `participant` (newest first), page by page."""
        params: dict[str, Any] = {"participant": participant, "limit": PAGE_LIMIT}
        if max_age_s is not None:
            params["max_age_s"] = max_age_s
        seen = 0
        while True:
            status, body = self.get("/v1/transactions", params)
            if status == 422 and params["limit"] > 50:
                params["limit"] = 50  # a node configured with a smaller list_page_max
                continue
            if status != 200:
                raise OpsError(1, f"GET /v1/transactions: {status} {body}")
            for t in body["items"]:
                yield t
                seen += 1
                if seen >= MAX_LISTED:
                    raise OpsError(
                        1, f"more than {MAX_LISTED} transactions for {participant}: use --since"
                    )
            cursor = body.get("next_cursor")
            if not cursor:
                return
            params["cursor"] = cursor
