"""The dashboard over HTTP without a browser: the page and its files, the event stream's
shape and content type, and who may read it. A real node on real PostgreSQL, with a
participant that is down so that a transaction is stuck in phase 2."""

from __future__ import annotations

import json
from typing import Any

import httpx

from coordinator.dashboard.routes import STREAM_MAX_AGE_S
from tests.helpers import ScriptedParticipant, free_port, serve
from tests.test_node import begin, enlist, node_db, running_node, wait_for

__all__ = ["node_db"]  # the fixture, imported for the tests below

TOKENS = {
    "admin": "admin-token-0123456789",
    "read": "read-token-0123456789",
    "participant": "participant-token-0123456789",
}
API_TOKENS = ",".join(f"{role}={token}" for role, token in TOKENS.items())


async def read_events(
    c: httpx.AsyncClient, want: int, params: dict[str, Any] | None = None, **kw: Any
) -> tuple[httpx.Response, list[tuple[str, Any]]]:
    """The first `want` events of a stream (then the stream is closed)."""
    events: list[tuple[str, Any]] = []
    async with c.stream("GET", "/dashboard/events", params=params, **kw) as r:
        if r.status_code != 200:
            await r.aread()
            return r, events
        name = "message"
        async for line in r.aiter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line.split(":", 1)[1])))
                if len(events) >= want:
                    break
    return r, events


async def test_page_and_files_are_served_with_their_types(node_db: str) -> None:
    async with running_node(node_db) as c:
        for path in ("/dashboard", "/dashboard/"):
            r = await c.get(path)
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/html; charset=utf-8"
            assert "script-src 'self'" in r.headers["content-security-policy"]
            assert '<script src="/dashboard/static/app.js"' in r.text
        types = {
            "app.js": "text/javascript",
            "style.css": "text/css",
            "icon.svg": "image/svg+xml",
        }
        for name, ctype in types.items():
            r = await c.get(f"/dashboard/static/{name}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(ctype)
        r = await c.get("/dashboard/static/..%2Fseries.py")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        info = (await c.get("/dashboard/api/info")).json()
        assert info["auth_required"] is False
        assert (await c.get("/dashboard/api/whoami")).json()["role"] == "admin"  # open node


async def test_stream_shows_a_stuck_transaction_with_its_last_error(node_db: str) -> None:
    ok = ScriptedParticipant()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with serve(ok.app()) as ok_url, running_node(node_db) as c:
        stuck = await begin(c, labels={"order": "A-1001"})
        assert (await enlist(c, stuck, "bank-a", ok_url)).status_code == 201
        assert (await enlist(c, stuck, "inventory", dead, vote="yes")).status_code == 201
        r = await c.post(f"/v1/transactions/{stuck}/commit")
        assert r.status_code == 200 and r.json()["state"] == "committing", r.text
        idle = await begin(c)

        async def has_error() -> bool:
            t = (await c.get(f"/v1/transactions/{stuck}")).json()
            return any(p["last_error"] for p in t["participants"])

        await wait_for(has_error)
        api = (await c.get(f"/v1/transactions/{stuck}")).json()

        resp, events = await read_events(c, 2)
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["cache-control"] == "no-cache"
        (kind1, snap), (kind2, metrics) = events
        assert (kind1, kind2) == ("snapshot", "metrics")
        assert snap["node"]["is_leader"] and snap["cluster"]["status"]["mode"] == "single-node"
        rows = {row["txid"]: row for row in snap["inflight"]["rows"]}
        assert set(rows) == {stuck, idle}
        assert snap["inflight"]["rows"][0]["txid"] == stuck  # flagged first
        row = rows[stuck]
        assert row["flags"] == ["retrying"] and row["labels"] == {"order": "A-1001"}
        inv = next(p for p in row["participants"] if p["name"] == "inventory")
        api_inv = next(p for p in api["participants"] if p["name"] == "inventory")
        assert inv["phase2"] == "pending" and inv["vote"] == "yes"
        assert inv["last_error"] and inv["last_error"].split(":")[0] == "commit"
        assert api_inv["last_error"].split(":")[0] == "commit"
        assert rows[idle]["flags"] == [] and rows[idle]["state"] == "active"

        assert metrics["full"] and len(metrics["points"]) == metrics["span_s"]
        assert sum(p["committed"] for p in metrics["points"]) >= 0
        parts = {p["name"]: p for p in metrics["participants"]}
        assert parts["inventory"]["failures"] >= 1 and parts["inventory"]["last_error"]
        assert parts["bank-a"]["failures"] == 0

        # Reconnecting with what it has, a page gets only the seconds it has not seen.
        since = metrics["points"][-1]["t"]
        _, again = await read_events(c, 2, params={"since": since, "source": metrics["source"]})
        later = again[1][1]
        assert not later["full"] and all(p["t"] > since for p in later["points"])
        # Another series (say, a new leader's) is sent whole.
        _, other = await read_events(c, 2, params={"since": since, "source": "node9/x"})
        assert other[1][1]["full"]


async def test_stream_ends_by_itself_so_a_stopping_node_is_not_held_up(node_db: str) -> None:
    async with running_node(node_db) as c:
        kinds = []
        async with c.stream("GET", "/dashboard/events") as r:
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    kinds.append(line.split(":", 1)[1].strip())
        assert kinds[-1] == "end"
        assert kinds.count("snapshot") >= int(STREAM_MAX_AGE_S)  # one a second until then


async def test_data_needs_a_reading_token_when_tokens_are_configured(node_db: str) -> None:
    async with running_node(node_db, api_tokens=API_TOKENS) as c:
        page = await c.get("/dashboard")
        assert page.status_code == 200  # the page holds no data
        assert (await c.get("/dashboard/api/info")).json()["auth_required"] is True
        r, _ = await read_events(c, 1)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
        assert r.headers["www-authenticate"] == "Bearer"
        bad = {"Authorization": "Bearer not-a-token-at-all"}
        r, _ = await read_events(c, 1, headers=bad)
        assert r.status_code == 401 and r.json()["error"]["message"] == "unknown token"
        part = {"Authorization": f"Bearer {TOKENS['participant']}"}
        r, _ = await read_events(c, 1, headers=part)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        for role in ("read", "admin"):
            auth = {"Authorization": f"Bearer {TOKENS[role]}"}
            r, events = await read_events(c, 1, headers=auth)
            assert r.status_code == 200 and events[0][0] == "snapshot"
            me = (await c.get("/dashboard/api/whoami", headers=auth)).json()
            assert me["role"] == role and me["admin"] is (role == "admin")
            assert TOKENS[role] not in json.dumps(me)
        for path in ("/dashboard/api/snapshot", "/dashboard/api/metrics"):
            assert (await c.get(path)).status_code == 401


async def test_transfer_leadership_is_relayed_to_the_leaders_api(node_db: str) -> None:
    async with running_node(node_db, api_tokens=API_TOKENS) as c:
        read = {"Authorization": f"Bearer {TOKENS['read']}"}
        admin = {"Authorization": f"Bearer {TOKENS['admin']}"}
        r = await c.post("/dashboard/api/transfer-leadership", json={"to": 2}, headers=read)
        assert r.status_code == 403  # the leader's API decides: admins only
        r = await c.post("/dashboard/api/transfer-leadership", json={"to": 2}, headers=admin)
        assert r.status_code == 409 and r.json()["error"]["code"] == "not_a_group"
        r = await c.post("/dashboard/api/transfer-leadership", json={"to": 0}, headers=admin)
        assert r.status_code == 422
