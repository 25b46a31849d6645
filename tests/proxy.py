"""A TCP proxy a test controls: forward, refuse (the service looks down) or hang (requests
go unanswered). Put in front of a participant, it lets a test cut the coordinator off from
it at an exact moment without touching either side's code."""

from __future__ import annotations

import asyncio
import contextlib
from enum import Enum

from coordinator.embedded_pg import free_port

PIPE_CHUNK = 65536


class Mode(Enum):
    FORWARD = "forward"
    REFUSE = "refuse"
    HANG = "hang"


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.mode = Mode.FORWARD
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop_connections()

    def set(self, mode: Mode) -> None:
        """Existing connections are cut, so keep-alive ones cannot bypass the new mode."""
        self.mode = mode
        self.drop_connections()

    def drop_connections(self) -> None:
        for t in list(self._conns):
            t.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)  # type: ignore[arg-type]
        try:
            if self.mode is Mode.REFUSE:
                return
            if self.mode is Mode.HANG:
                await asyncio.sleep(3600)
                return
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                return
            try:
                await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
            finally:
                up_w.close()
        except asyncio.CancelledError:
            pass
        finally:
            self._conns.discard(task)  # type: ignore[arg-type]
            writer.close()


async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await r.read(PIPE_CHUNK):
            w.write(data)
            await w.drain()
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        w.write_eof()
