"""The baseline participant of `txc bench transfers`: the demo bank's business endpoints with
no coordinator, each request one autocommitting local transaction (fast, not atomic).

Why a separate app and not the demo bank itself: `txc_demo.bank` joins with `rm.join()`
(required), so a request without `Txc-Transaction` is refused with 400 rather than run
locally. This app runs exactly the bank's own work function (`txc_demo.bank._move`: `SET
LOCAL lock_timeout`, `UPDATE bank_account ... RETURNING`, `INSERT INTO bank_ledger`) on the
same tables, with the same framework, server, engine and pool settings (FastAPI sync
endpoints in the thread pool, uvicorn at log level info, the bank's own pool:
`bank.make_engine`), and commits it at once instead of preparing it and enlisting.

    python -m coordinator.bench.baseline_bank --name bank-a --database-url URL --port 8101
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from participant_sdk.header_deadline import server_options
from participant_sdk.pg_resource import PgWork
from txc_demo import bank


def create_app(name: str, database_url: str) -> FastAPI:
    engine = bank.make_engine(database_url)
    app = FastAPI(title=f"txc bench baseline bank {name}")

    @app.exception_handler(bank.BankError)
    def bank_error(request: Request, exc: bank.BankError) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status, content={"error": {"code": exc.code, "message": exc.message}}
        )

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "bank": name, "mode": "baseline"}

    def move(account: str, delta: int) -> dict[str, Any]:
        with engine.begin() as conn:  # one local transaction, committed on exit
            balance = bank._move(PgWork(None, name, None, conn), account, delta)
        return {"bank": name, "txid": None, "account": account, "balance": balance}

    @app.post("/transfer/debit")
    def debit(body: bank.Movement) -> dict[str, Any]:
        return move(body.account, -body.amount)

    @app.post("/transfer/credit")
    def credit(body: bank.Movement) -> dict[str, Any]:
        return move(body.account, body.amount)

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description="baseline bank: business endpoints, autocommit")
    ap.add_argument("--name", required=True)
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)  # as the demo bank
    uvicorn.run(
        create_app(args.name, args.database_url),
        host=args.host,
        port=args.port,
        **server_options(),  # as the txc bank, so that both pay the same
    )


if __name__ == "__main__":
    main()
