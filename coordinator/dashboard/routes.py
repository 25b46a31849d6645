"""HTTP routes of the dashboard.

| route | what |
|---|---|
| `GET /dashboard` | the page (public: it holds no data; the data needs the API token) |
| `GET /dashboard/static/{name}` | its script, style sheet and icon |
| `GET /dashboard/api/info` | public: this node's id and whether a token is required |
| `GET /dashboard/api/whoami` | the caller's role (the page offers actions to admins only) |
| `GET /dashboard/events` | server-sent events: `snapshot` and `metrics`, see `stream` |
| `GET /dashboard/api/snapshot` | one `snapshot` as JSON (tools and tests) |
| `GET /dashboard/api/metrics` | this node's activity series and participant figures |
| `POST /dashboard/api/transfer-leadership` | relays to the leader's API (see there) |

The data routes admit the roles that may read through `/v1` (read, client, admin) when
tokens are configured. Actions (abort, retry, acknowledge) are plain API v1 calls from the
page, which a follower forwards to the leader like any other; the API checks that the caller
is an admin and writes the audit trail.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any

import httpx
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from coordinator.auth import Principal, Role, TokenTable, parse_tokens
from coordinator.dashboard.feed import Feed
from coordinator.http_common import ApiError, authenticated

if TYPE_CHECKING:  # the node builds the app: no import at run time
    from coordinator.node import Node

PUSH_INTERVAL_S = 1.0  # a stream sends a snapshot and the new seconds of activity this often
# A stream ends after this long and the page reconnects at once, asking only for what it has
# not seen. The bound matters at shutdown: uvicorn waits for open responses to finish before
# it stops, so a stream that never ended would hold a stopping node up until it is killed.
STREAM_MAX_AGE_S = 5.0
MAX_STREAMS = 64  # concurrent event streams one node serves; more get 503
RELAY_TIMEOUT_S = 10.0  # a leadership transfer relayed to the leader
VIEWERS = frozenset({Role.READ, Role.CLIENT, Role.ADMIN})  # those `/v1` lets read

STATIC_FILES = {  # the only files served from static/, with their types
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
PAGE_HEADERS = {
    # Everything comes from this node; nothing inline runs. The token lives in
    # sessionStorage, so injected script is what this policy keeps out.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> bytes | None:
    """A file of static/, or None when the installation lacks it (a packaging mistake that
    must cost the dashboard, not the coordinator)."""
    try:
        return resources.files("coordinator.dashboard").joinpath("static", name).read_bytes()
    except OSError:
        return None


def _missing(name: str) -> ApiError:
    return ApiError(
        503, "dashboard_unavailable", f"dashboard file {name} is missing from this installation"
    )


def sse(event: str, data: Any) -> str:
    """One server-sent event; JSON never contains a raw newline, so one `data:` line."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class TransferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: int = Field(ge=1)


def build_router(node: Node) -> APIRouter:
    settings = node.settings
    tokens = TokenTable(parse_tokens(settings.api_tokens, settings.api_token))
    feed = Feed(node)
    page = _asset("index.html")
    assets = {name: _asset(name) for name in STATIC_FILES}
    streams = 0

    async def authenticate(request: Request) -> Principal:
        """The rule of `/v1`'s reads: no tokens configured, open; else a known token of a
        role that may read (401 for a missing or unknown token, 403 for another role)."""
        p = authenticated(tokens, request)
        if p.role not in VIEWERS:
            raise ApiError(403, "forbidden", f"role {p.role.value} may not view the dashboard")
        return p

    Auth = Depends(authenticate)
    r = APIRouter(prefix="/dashboard", include_in_schema=False)

    @r.get("")
    @r.get("/")
    async def index() -> Response:
        if page is None:
            raise _missing("index.html")
        return Response(page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @r.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC_FILES:
            raise ApiError(404, "not_found", f"no dashboard file {name!r}")
        content = assets[name]
        if content is None:
            raise _missing(name)
        return Response(content, media_type=STATIC_FILES[name], headers=PAGE_HEADERS)

    @r.get("/api/info")
    async def info() -> dict[str, Any]:
        return {
            "node_id": settings.node_id,
            "auth_required": tokens.enabled,
            "push_interval_s": PUSH_INTERVAL_S,
        }

    @r.get("/api/whoami")
    async def whoami(p: Principal = Auth) -> dict[str, Any]:
        return {"role": p.role.value, "fingerprint": p.fingerprint, "admin": p.role is Role.ADMIN}

    @r.get("/api/snapshot", dependencies=[Auth])
    async def snapshot() -> dict[str, Any]:
        return await feed.snapshot()

    @r.get("/api/metrics", dependencies=[Auth])
    async def metrics(
        since: Annotated[int | None, Query(ge=0)] = None,
        source: Annotated[str | None, Query(max_length=200)] = None,
    ) -> dict[str, Any]:
        """This node's own series (a follower's dashboard reads its leader's here)."""
        return feed.local_metrics(since, source)

    @r.get("/events", dependencies=[Auth])
    async def events(
        since: Annotated[int | None, Query(ge=0)] = None,
        source: Annotated[str | None, Query(max_length=200)] = None,
    ) -> Response:
        nonlocal streams
        if streams >= MAX_STREAMS:
            raise ApiError(
                503, "too_many_streams", f"this node serves {MAX_STREAMS} streams at most"
            )
        return StreamingResponse(
            stream(since, source),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def stream(since: int | None, source: str | None) -> AsyncIterator[str]:
        """Each `PUSH_INTERVAL_S`: `event: snapshot` (transactions, cluster; the whole of
        it, so a page is right after any reconnect) then `event: metrics` (the leader's
        activity: all of it the first time or when the series changed source, later only
        the seconds after the last one sent). Ends with `event: end` after
        `STREAM_MAX_AGE_S`; the page reconnects with `since` and `source`."""
        nonlocal streams
        streams += 1  # here, not in the route: a stream never started never ends either
        try:
            started = time.monotonic()
            yield "retry: 1000\n\n"
            while True:
                yield sse("snapshot", await feed.snapshot())
                m = await feed.metrics(since, source)
                if m["points"]:
                    since = m["points"][-1]["t"]
                source = m["source"]
                yield sse("metrics", m)
                if time.monotonic() - started >= STREAM_MAX_AGE_S:
                    yield sse("end", {"reconnect": True, "since": since, "source": source})
                    return
                await asyncio.sleep(PUSH_INTERVAL_S)
        finally:
            streams -= 1

    @r.post("/api/transfer-leadership", dependencies=[Auth])
    async def transfer_leadership(body: TransferRequest, request: Request) -> Response:
        """`POST /v1/cluster/transfer-leadership` on the leader, whichever node serves the
        page: the API does not forward cluster calls, and the page cannot reach another
        node itself (another origin). The leader's API checks the caller's token again."""
        leader = node.log.leader_url()
        if leader is None or node.http is None:
            raise ApiError(503, "not_leader", "no leader elected yet")
        headers = {"content-type": "application/json"}
        if "authorization" in request.headers:
            headers["authorization"] = request.headers["authorization"]
        try:
            resp = await node.http.post(
                leader.rstrip("/") + "/v1/cluster/transfer-leadership",
                json={"to": body.to},
                headers=headers,
                timeout=RELAY_TIMEOUT_S,
            )
        except httpx.HTTPError as e:
            raise ApiError(
                503, "not_leader", f"leader unreachable: {type(e).__name__}", {"Txc-Leader": leader}
            ) from None
        try:
            content = resp.json()
        except ValueError:
            content = {"error": {"code": "bad_gateway", "message": resp.text[:200]}}
        return JSONResponse(content, status_code=resp.status_code)

    return r
