"""A minimal participant service for the SDK's tests: `POST /items/{key}` inserts a row in
the joined global transaction (or fails on request, to test the rollback paths)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import FastAPI, HTTPException
from sdk_servers import ServerThread, free_port
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from participant_sdk import AsyncJoin, PgResourceManager, PgWork, TxcClient

FAST_RETRIES = 1  # keep failing-coordinator tests short


def items_app(rm: PgResourceManager, recovery: bool = False) -> FastAPI:
    app = FastAPI()
    rm.install(app, recovery=recovery)

    @app.post("/items/{key}")
    def put(
        key: str,
        value: int = 1,
        fail: bool = False,
        swallow: bool = False,
        work: PgWork = rm.join(),
    ) -> dict:
        work.connection.execute(
            text("INSERT INTO items (k, v) VALUES (:k, :v)"), {"k": key, "v": value}
        )
        if swallow:  # a buggy application that hides a failed statement
            with contextlib.suppress(DBAPIError):
                work.connection.execute(text("SELECT 1/0"))
        if fail:
            raise HTTPException(422, "business failure")
        return {"txid": work.txid, "gid": work.gid}

    @app.post("/local/{key}")
    def local(key: str, work: PgWork = rm.join(required=False)) -> dict:
        work.connection.execute(text("INSERT INTO items (k, v) VALUES (:k, 0)"), {"k": key})
        return {"txid": work.txid}

    def insert(work: PgWork, key: str, value: int, fail: bool) -> dict:
        work.connection.execute(
            text("INSERT INTO items (k, v) VALUES (:k, :v)"), {"k": key, "v": value}
        )
        if fail:
            raise HTTPException(422, "business failure")
        return {"txid": work.txid, "gid": work.gid}

    # The same two endpoints as `async def` with join_async(): one worker-thread call each.
    @app.post("/async-items/{key}")
    async def put_async(
        key: str,
        value: int = 1,
        fail: bool = False,
        twice: bool = False,
        skip: bool = False,
        join: AsyncJoin[PgWork] = rm.join_async(),
    ) -> dict:
        if skip:  # an endpoint that decides not to do any work
            return {"txid": join.txid}
        result = await join.run(insert, key, value, fail)
        if twice:
            await join.run(insert, key + "2", value, fail)
        return result

    @app.post("/async-local/{key}")
    async def local_async(key: str, join: AsyncJoin[PgWork] = rm.join_async(required=False)):
        return await join.run(insert, key, 0, False)

    return app


@dataclass
class Service:
    rm: PgResourceManager
    url: str
    server: ServerThread


@contextlib.contextmanager
def serve_items(
    engine: Engine,
    coordinator_url: str | None,
    name: str = "svc",
    token: str | None = None,
    recovery: bool = False,
    recovery_interval_s: float = 5.0,
    deferred_enlistment: bool = False,
) -> Iterator[Service]:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    coordinator = (
        TxcClient(coordinator_url, token=token, retries=FAST_RETRIES) if coordinator_url else None
    )
    rm = PgResourceManager(
        name,
        engine,
        public_url=public,
        coordinator=coordinator,
        token=token,
        recovery_interval_s=recovery_interval_s,
        deferred_enlistment=deferred_enlistment,
        development=not token,  # the fake coordinator signs nothing
    )
    server = ServerThread(items_app(rm, recovery=recovery), port).start()
    try:
        yield Service(rm, public, server)
    finally:
        server.stop()
        rm.close()
