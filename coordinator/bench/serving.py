"""Serve an ASGI app on a real port inside the running event loop (benchmarks and tests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from coordinator.embedded_pg import free_port
from participant_sdk.header_deadline import HEADER_TIMEOUT_S, server_options

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


@contextlib.asynccontextmanager
async def serve(
    app: Any, port: int | None = None, header_timeout_s: float = HEADER_TIMEOUT_S
) -> AsyncIterator[str]:
    """Yields the base URL (http://127.0.0.1:port) while uvicorn serves `app`."""
    port = port or free_port()
    options = server_options(header_timeout_s)  # a deadline on request headers, as `txc serve`
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **options
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise RuntimeError("server stopped before it started")
        if loop.time() > deadline:
            raise RuntimeError(f"server did not start on port {port}")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, STOP_TIMEOUT_S)


def null_participant_app() -> Any:
    """A participant that prepares nothing and acknowledges everything (DESIGN §5)."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/prepare")
    async def prepare() -> dict[str, str]:
        return {"vote": "yes"}

    @app.post("/commit")
    async def commit() -> dict[str, str]:
        return {}

    @app.post("/abort")
    async def abort() -> dict[str, str]:
        return {}

    return app
