"""A minimal MariaDB participant service for the SDK's tests: `POST /items/{key}` inserts a
row in the joined global transaction (or fails on request); the MariaDB twin of sdk_apps."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import FastAPI, HTTPException
from sdk_servers import ServerThread, free_port
from sqlalchemy import Engine, text

from participant_sdk import AsyncJoin, TxcClient
from participant_sdk.mysql_resource import MySqlResourceManager, MySqlWork

FAST_RETRIES = 1  # keep failing-coordinator tests short


def items_app(rm: MySqlResourceManager, recovery: bool = False) -> FastAPI:
    app = FastAPI()
    rm.install(app, recovery=recovery)

    @app.post("/items/{key}")
    def put(key: str, value: int = 1, fail: bool = False, work: MySqlWork = rm.join()) -> dict:
        work.connection.execute(
            text("INSERT INTO items (k, v) VALUES (:k, :v)"), {"k": key, "v": value}
        )
        if fail:
            raise HTTPException(422, "business failure")
        return {"txid": work.txid, "xid": work.xid}

    def insert(work: MySqlWork, key: str, value: int) -> dict:
        work.connection.execute(
            text("INSERT INTO items (k, v) VALUES (:k, :v)"), {"k": key, "v": value}
        )
        return {"txid": work.txid, "xid": work.xid}

    @app.post("/async-items/{key}")
    async def put_async(
        key: str, value: int = 1, join: AsyncJoin[MySqlWork] = rm.join_async()
    ) -> dict:
        return await join.run(insert, key, value)

    @app.post("/local/{key}")
    def local(key: str, work: MySqlWork = rm.join(required=False)) -> dict:
        work.connection.execute(text("INSERT INTO items (k, v) VALUES (:k, 0)"), {"k": key})
        return {"txid": work.txid}

    return app


@dataclass
class Service:
    rm: MySqlResourceManager
    url: str
    server: ServerThread


@contextlib.contextmanager
def serve_items(
    engine: Engine,
    coordinator_url: str | None,
    name: str = "svc",
    recovery: bool = False,
    recovery_interval_s: float = 5.0,
    deferred_enlistment: bool = False,
) -> Iterator[Service]:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    coordinator = TxcClient(coordinator_url, retries=FAST_RETRIES) if coordinator_url else None
    rm = MySqlResourceManager(
        name,
        engine,
        public_url=public,
        coordinator=coordinator,
        recovery_interval_s=recovery_interval_s,
        deferred_enlistment=deferred_enlistment,
        development=True,  # the fake coordinator signs nothing
    )
    server = ServerThread(items_app(rm, recovery=recovery), port).start()
    try:
        yield Service(rm, public, server)
    finally:
        server.stop()
        rm.close()
