"""Test helpers: serving an ASGI app on a real port, and a participant whose answers a test
scripts (it implements DESIGN §5 by hand, without the SDK)."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from coordinator.bench.serving import serve
from coordinator.embedded_pg import free_port

__all__ = ["ScriptedParticipant", "free_port", "serve", "trickle"]


@dataclass
class ScriptedParticipant:
    """Answers prepare with `vote`; phase 2 fails with `phase2_status` while it is set."""

    vote: str = "yes"
    phase2_status: int | None = None
    prepare_delay_s: float = 0.0
    prepare_status: int | None = None  # answer prepare with this error status instead
    calls: list[tuple[str, str]] = field(default_factory=list)
    committed: set[str] = field(default_factory=set)
    aborted: set[str] = field(default_factory=set)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/prepare")
        async def prepare(req: Request) -> JSONResponse:
            body = await req.json()
            self.calls.append(("prepare", body["txid"]))
            await asyncio.sleep(self.prepare_delay_s)
            if self.prepare_status is not None:
                return JSONResponse(
                    {"error": {"code": "down", "message": "scripted failure"}}, self.prepare_status
                )
            if self.vote == "no":
                return JSONResponse({"vote": "no", "reason": "insufficient funds"}, 409)
            return JSONResponse({"vote": self.vote})

        async def finish(action: str, req: Request) -> JSONResponse:
            body = await req.json()
            self.calls.append((action, body["txid"]))
            if self.phase2_status is not None:
                return JSONResponse(
                    {"error": {"code": "down", "message": "scripted failure"}}, self.phase2_status
                )
            (self.committed if action == "commit" else self.aborted).add(body["txid"])
            return JSONResponse({})

        @app.post("/commit")
        async def commit(req: Request) -> JSONResponse:
            return await finish("commit", req)

        @app.post("/abort")
        async def abort(req: Request) -> JSONResponse:
            return await finish("abort", req)

        return app


def trickle(port: int, head: bytes, trickle_s: float, within_s: float) -> str:
    """Send `head` (request line, headers and maybe the start of a body), then a byte every
    `trickle_s`; the status line of whatever answer comes within `within_s`."""
    s = socket.create_connection(("127.0.0.1", port), timeout=within_s)
    try:
        s.sendall(head)
        deadline = time.monotonic() + within_s
        s.settimeout(trickle_s)
        while time.monotonic() < deadline:
            try:
                data = s.recv(4096)
                return data.decode(errors="replace").split("\r\n", 1)[0] if data else "closed"
            except TimeoutError:
                try:
                    s.sendall(b" ")
                except OSError:
                    return "closed"
        return "no answer"
    finally:
        s.close()


def gone(pid: int) -> bool:
    """True when `pid` no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
