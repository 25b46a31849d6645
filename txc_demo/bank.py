"""Demo bank: a participant service holding account balances in its own PostgreSQL (or
MariaDB/MySQL) database.

A transfer between two banks is one global transaction: bank A's `POST /transfer/debit` and
bank B's `POST /transfer/credit` each run in a local transaction that the SDK's PostgreSQL
resource manager prepares before answering; the client then asks the coordinator to commit.
Until phase 2 arrives, the debited/credited rows stay locked by the prepared transaction;
another request on the same account waits at most WORK_LOCK_TIMEOUT_MS and then gets 409
`account_busy` (instead of blocking a worker for as long as a transaction stays in doubt).

On MariaDB/MySQL (`--database-url mysql+pymysql://...`, `mysql://` or `mariadb://`) the same
service runs on the SDK's MySqlResourceManager (XA branches) with its own schema and SQL
(`bank_mysql.py`), so one transfer can move money between a PostgreSQL bank and a MariaDB one.

Run:  python -m txc_demo.bank --name bank-a --database-url postgresql+psycopg://... \
          --coordinator-url http://127.0.0.1:7000 --port 8001
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Engine,
    Identity,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from participant_sdk import (
    AsyncJoin,
    InsecureConfiguration,
    PgResourceManager,
    PgWork,
    create_tables,
    mysql_engine,
)
from participant_sdk.header_deadline import server_options
from participant_sdk.mysql_resource import MySqlResourceManager, MySqlWork
from participant_sdk.recovery import RECOVERY_INTERVAL_S
from txc_demo import bank_mysql

log = logging.getLogger("txc.demo.bank")

SEED_ACCOUNTS = {"alice": 1000, "bob": 1000, "carol": 1000}
WORK_LOCK_TIMEOUT_MS = 5000  # wait for a row another (prepared) transaction holds
MAX_AMOUNT = 1_000_000_000
MAX_ACCOUNT_NAME = 64
DEFAULT_PORT = 8001
ACCOUNT_PATTERN = r"^[A-Za-z0-9_.\-]+$"
SQLSTATE_LOCK_NOT_AVAILABLE = "55P03"
# Connections kept open: one per request in flight (anyio's default thread pool runs up to 40
# sync endpoints at once, business and phase-2 handlers alike), so that a busy bank does not
# open and close connections: each new PostgreSQL backend costs a fork and a cold cache
# (`txc bench transfers` measured ~0.3-0.5 cores of such churn at 32 clients with a pool of 16).
# The pool opens them lazily; beyond POOL_SIZE (recovery, callers outside the thread pool),
# short-lived extra ones.
# No pre-ping: a dead pooled connection fails its statement, the request fails (nothing
# prepared, or the coordinator retries phase 2) and the pool discards the connection.
POOL_SIZE = 40
POOL_MAX_OVERFLOW = 8
POOL_TIMEOUT_S = 10.0  # waiting for a free connection beyond that is an overload: fail

metadata = MetaData()

accounts = Table(
    "bank_account",
    metadata,
    Column("name", String(MAX_ACCOUNT_NAME), primary_key=True),
    Column("balance", BigInteger, nullable=False),
    CheckConstraint("balance >= 0", name="ck_bank_account_balance"),
)

ledger = Table(
    "bank_ledger",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("txid", String(128), nullable=True),
    Column("account", String(MAX_ACCOUNT_NAME), nullable=False),
    Column("delta", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


class Movement(BaseModel):
    account: str = Field(min_length=1, max_length=MAX_ACCOUNT_NAME, pattern=ACCOUNT_PATTERN)
    amount: int = Field(gt=0, le=MAX_AMOUNT)


class BankError(Exception):
    """A business refusal, rendered as {"error": {"code", "message"}}. Raising it inside a
    joined request rolls the local work back (nothing is prepared or enlisted)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def init_database(engine: Engine, seed: dict[str, int] | None = None) -> None:
    """Create the SDK's record table and the bank's tables; seed accounts if there are none."""
    create_tables(engine)
    metadata.create_all(engine, checkfirst=True)
    with engine.begin() as conn:
        if conn.execute(select(func.count()).select_from(accounts)).scalar_one() == 0:
            rows = [{"name": n, "balance": b} for n, b in (seed or SEED_ACCOUNTS).items()]
            conn.execute(accounts.insert(), rows)


def list_accounts(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(select(accounts).order_by(accounts.c.name)).all()
    return [{"name": r.name, "balance": r.balance} for r in rows]


def _move(work: PgWork, account: str, delta: int) -> int:
    conn = work.connection
    conn.execute(text(f"SET LOCAL lock_timeout = {WORK_LOCK_TIMEOUT_MS}"))
    stmt = update(accounts).where(accounts.c.name == account)
    if delta < 0:
        stmt = stmt.where(accounts.c.balance >= -delta)
    try:
        new_balance = conn.execute(
            stmt.values(balance=accounts.c.balance + delta).returning(accounts.c.balance)
        ).scalar_one_or_none()
        if new_balance is None:
            exists = conn.execute(select(accounts.c.name).where(accounts.c.name == account)).first()
            if exists is None:
                raise BankError(404, "unknown_account", f"no account {account!r}")
            raise BankError(409, "insufficient_funds", f"{account!r} cannot pay {-delta}")
        conn.execute(ledger.insert().values(txid=work.txid, account=account, delta=delta))
    except DBAPIError as e:
        state = getattr(e.orig, "sqlstate", None)
        if state == SQLSTATE_LOCK_NOT_AVAILABLE:
            busy = f"{account!r} is locked by another transfer"
            raise BankError(409, "account_busy", busy) from e
        raise
    return int(new_balance)


def is_mysql(database_url: str) -> bool:
    """Whether the bank runs on MariaDB/MySQL (else PostgreSQL)."""
    return mysql_engine.is_mysql_url(database_url)


def _move_mysql(work: MySqlWork, account: str, delta: int) -> int:
    try:
        balance = bank_mysql.move(work.connection, work.txid, account, delta)
    except bank_mysql.Busy as e:
        raise BankError(409, "account_busy", f"{account!r} is locked by another transfer") from e
    if balance is None:
        if bank_mysql.account(work.connection, account) is None:
            raise BankError(404, "unknown_account", f"no account {account!r}")
        raise BankError(409, "insufficient_funds", f"{account!r} cannot pay {-delta}")
    return balance


def make_engine(database_url: str) -> Engine:
    """The bank's connection pool (the benchmark's baseline bank uses the same one)."""
    make = mysql_engine.create_engine if is_mysql(database_url) else create_engine
    return make(
        database_url,
        pool_size=POOL_SIZE,
        max_overflow=POOL_MAX_OVERFLOW,
        pool_timeout=POOL_TIMEOUT_S,
        pool_pre_ping=False,
    )


def create_app(
    name: str,
    database_url: str,
    coordinator_url: str,
    public_url: str,
    *,
    token: str | None = None,
    participant_token: str | None = None,
    recovery_interval_s: float = RECOVERY_INTERVAL_S,
    seed: dict[str, int] | None = None,
    development: bool = False,
) -> FastAPI:
    """The bank service. `public_url` is where the coordinator reaches it (the protocol
    endpoints live under `{public_url}/txc`). `participant_token` is this bank's secret (its
    entry in the coordinator's participant registry: it signs its calls and answers with
    it, and checks the coordinator's requests against it); `token` an API bearer token,
    used only without a secret. Without either, the bank refuses to start unless
    `development` (participant_sdk.InsecureConfiguration)."""
    engine = make_engine(database_url)
    mysql = is_mysql(database_url)
    kind: type[PgResourceManager] | type[MySqlResourceManager] = (
        MySqlResourceManager if mysql else PgResourceManager
    )
    rm: PgResourceManager | MySqlResourceManager = kind(
        name,
        engine,
        public_url=public_url,
        coordinator_url=coordinator_url,
        token=token,
        participant_token=participant_token,
        recovery_interval_s=recovery_interval_s,
        deferred_enlistment=True,  # lazy transactions (README); the bench measures them
        development=development,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if isinstance(rm, MySqlResourceManager):
            bank_mysql.init_database(engine, seed or SEED_ACCOUNTS)
            rm.check_server()  # a server too old for XA: refuse to start, saying why
        else:
            init_database(engine, seed)
            if rm.max_prepared_transactions() == 0:
                log.error("max_prepared_transactions is 0 on %s: transfers will fail", name)
        try:
            yield
        finally:
            engine.dispose()

    app = FastAPI(title=f"txc demo bank {name}", lifespan=lifespan)
    rm.install(app)  # protocol endpoints under /txc + in-doubt recovery loop
    # Phase-2 calls are logged by the coordinator; failed ones still appear here.
    rm.quiet_protocol_access_log()
    app.state.rm = rm
    app.state.engine = engine

    @app.exception_handler(BankError)
    def bank_error(request: Request, exc: BankError) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status, content={"error": {"code": exc.code, "message": exc.message}}
        )

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "bank": name}

    @app.get("/accounts")
    def get_accounts() -> dict[str, Any]:
        with engine.connect() as conn:
            rows = bank_mysql.accounts(conn) if mysql else list_accounts(conn)
        return {"bank": name, "accounts": rows, "total": sum(r["balance"] for r in rows)}

    @app.get("/accounts/{account}")
    def get_account(account: str) -> dict[str, Any]:
        with engine.connect() as conn:
            if mysql:
                found = bank_mysql.account(conn, account)
            else:
                row = conn.execute(select(accounts).where(accounts.c.name == account)).first()
                found = None if row is None else {"name": row.name, "balance": row.balance}
        if found is None:
            raise BankError(404, "unknown_account", f"no account {account!r}")
        return {"bank": name, **found}

    def move(work: PgWork | MySqlWork, account: str, delta: int) -> dict[str, Any]:
        if isinstance(work, MySqlWork):
            balance = _move_mysql(work, account, delta)
        else:
            balance = _move(work, account, delta)
        return {"bank": name, "txid": work.txid, "account": account, "balance": balance}

    # `async def` + join_async(): the joined unit (record check, _move, prepare, enlist) runs
    # in one worker-thread call instead of four (see participant_sdk.participant).
    @app.post("/transfer/debit")
    async def debit(body: Movement, join: AsyncJoin[PgWork] = rm.join_async()) -> dict[str, Any]:
        return await join.run(move, body.account, -body.amount)

    @app.post("/transfer/credit")
    async def credit(body: Movement, join: AsyncJoin[PgWork] = rm.join_async()) -> dict[str, Any]:
        return await join.run(move, body.account, body.amount)

    return app


def probe_database(engine: Engine) -> None:
    """One connection before serving: a wrong database URL is reported as such (DBAPIError)
    instead of as a failed application start-up."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    engine.dispose()


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description="txc demo bank (a participant service)")
    ap.add_argument("--name", required=True, help="participant name, e.g. bank-a")
    ap.add_argument("--database-url", required=True, help="SQLAlchemy URL of its own database")
    ap.add_argument(
        "--coordinator-url", required=True, help="a coordinator node, or several: URL1,URL2"
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT)
    ap.add_argument("--public-url", default=None, help="default: http://HOST:PORT")
    ap.add_argument(
        "--token",
        default=os.environ.get("TXC_API_TOKEN"),
        help="coordinator API token (or $TXC_API_TOKEN)",
    )
    ap.add_argument(
        "--participant-token",
        default=os.environ.get("TXC_PARTICIPANT_TOKEN"),
        help="this bank's secret in the coordinator's participant registry "
        "(or $TXC_PARTICIPANT_TOKEN)",
    )
    ap.add_argument(
        "--development",
        action="store_true",
        help="serve the protocol endpoints unsigned when no secret is given (never on a "
        "network: anyone who reaches them can commit or abort the bank's prepared work)",
    )
    ap.add_argument("--recovery-interval", type=float, default=RECOVERY_INTERVAL_S)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    public_url = args.public_url or f"http://{args.host}:{args.port}"
    try:
        app = create_app(
            args.name,
            args.database_url,
            args.coordinator_url,
            public_url,
            token=args.token,
            participant_token=args.participant_token,
            recovery_interval_s=args.recovery_interval,
            development=args.development,
        )
        probe_database(app.state.engine)
    except (InsecureConfiguration, ValueError, ArgumentError) as e:
        print(f"txc demo bank: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except DBAPIError as e:
        where = make_url(args.database_url).render_as_string(hide_password=True)
        print(f"txc demo bank: cannot use its database {where}: {e.orig}", file=sys.stderr)
        raise SystemExit(2) from None
    # The header deadline (participant_sdk/header_deadline.py): slow or silent connections
    # cannot fill the bank's connection slots.
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", **server_options())


if __name__ == "__main__":
    main()
