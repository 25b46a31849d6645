"""A coordinator node against real PostgreSQL and real HTTP participants (in-process uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from coordinator import migrate
from coordinator.config import Settings
from coordinator.node import build_app
from tests.helpers import ScriptedParticipant, free_port, serve

FAST = dict(
    phase2_backoff_initial_s=0.05,
    phase2_backoff_max_s=0.3,
    phase2_inline_wait_s=1.0,
    sweep_interval_s=0.1,
    prepare_timeout_s=2.0,
)


@contextlib.asynccontextmanager
async def running_node(
    db_url: str, port: int | None = None, **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    port = port or free_port()
    settings = Settings(database_url=db_url, port=port, **{**FAST, **overrides})
    app = build_app(settings, run_migrations=False)
    async with (
        serve(app, port, settings.header_timeout_s) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        yield client


@pytest.fixture
def node_db(db_url: str) -> str:
    migrate.upgrade(db_url, "coordinator")
    return db_url


async def wait_for(predicate: Any, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def begin(c: httpx.AsyncClient, **body: Any) -> str:
    r = await c.post("/v1/transactions", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["txid"])


async def enlist(
    c: httpx.AsyncClient, txid: str, name: str, url: str, vote: str | None = None
) -> httpx.Response:
    body = {"name": name, "url": url}
    if vote:
        body["vote"] = vote
    return await c.post(f"/v1/transactions/{txid}/participants", json=body)


async def test_commit_runs_prepare_only_where_needed_and_phase2_everywhere(node_db: str) -> None:
    a, b = ScriptedParticipant(), ScriptedParticipant()
    async with serve(a.app()) as ua, serve(b.app()) as ub, running_node(node_db) as c:
        txid = await begin(c, labels={"order": "42"})
        assert (await enlist(c, txid, "a", ua)).status_code == 201
        assert (await enlist(c, txid, "b", ub, vote="yes")).status_code == 201
        r = await c.post(f"/v1/transactions/{txid}/commit")
        assert r.status_code == 200, r.text
        t = r.json()
        assert t["outcome"] == "commit" and t["state"] == "committed"
        assert ("prepare", txid) in a.calls and ("prepare", txid) not in b.calls
        assert txid in a.committed and txid in b.committed
        assert {p["phase2"] for p in t["participants"]} == {"done"}
        # Repeated commit: same outcome, no new prepare.
        calls = len(a.calls)
        again = await c.post(f"/v1/transactions/{txid}/commit")
        assert again.status_code == 200 and again.json()["outcome"] == "commit"
        assert len(a.calls) == calls
        o = await c.get(f"/v1/transactions/{txid}/outcome")
        assert o.json() == {"txid": txid, "outcome": "commit"}
        abort = await c.post(f"/v1/transactions/{txid}/abort")
        assert abort.status_code == 409 and abort.json()["error"]["code"] == "committed"
        tl = (await c.get(f"/v1/transactions/{txid}/timeline")).json()["events"]
        kinds = [e["kind"] for e in tl]
        assert (
            kinds[:3] == ["begin", "enlist", "enlist"]
            and "decide" in kinds
            and kinds.count("ack") == 2
        )


async def test_a_no_vote_aborts_everyone_who_may_hold_work(node_db: str) -> None:
    yes, no = ScriptedParticipant(), ScriptedParticipant(vote="no")
    async with serve(yes.app()) as uy, serve(no.app()) as un, running_node(node_db) as c:
        txid = await begin(c)
        await enlist(c, txid, "yes", uy)
        await enlist(c, txid, "no", un)
        r = await c.post(f"/v1/transactions/{txid}/commit")
        assert r.status_code == 409
        body = r.json()
        assert body["error"]["code"] == "aborted" and body["outcome"] == "abort"
        assert "insufficient funds" in body["error"]["message"]
        assert txid in yes.aborted and txid not in yes.committed and txid not in no.committed
        # An explicit NO means the participant rolled back on its own: no abort is sent.
        assert ("abort", txid) not in no.calls
        assert (await c.post(f"/v1/transactions/{txid}/commit")).status_code == 409
        late = await enlist(c, txid, "late", uy)
        assert late.status_code == 409


async def test_participant_down_at_prepare_aborts(node_db: str) -> None:
    up = ScriptedParticipant()
    dead = f"http://127.0.0.1:{free_port()}"
    async with serve(up.app()) as uu, running_node(node_db) as c:
        txid = await begin(c)
        await enlist(c, txid, "up", uu)
        await enlist(c, txid, "dead", dead)
        r = await c.post(f"/v1/transactions/{txid}/commit")
        assert r.status_code == 409
        t = r.json()["transaction"]
        dead_p = next(p for p in t["participants"] if p["name"] == "dead")
        assert dead_p["vote"] == "no" and "prepare" in dead_p["vote_reason"]
        assert txid in up.aborted
        # Presumed abort: nothing waits for the dead participant (it asks when it is back).
        assert t["state"] == "aborted" and dead_p["phase2"] == "not_needed"


@pytest.mark.parametrize("how", ["5xx", "too_slow"])
async def test_a_participant_that_did_not_answer_prepare_gets_the_abort(
    node_db: str, how: str
) -> None:
    """Its prepare may have made the work durable before the answer was lost (a timeout, a
    503 from a failing callback): it is sent one courtesy abort, so that it need not hold
    the work until its recovery asks; the transaction does not wait for it."""
    ok = ScriptedParticipant()
    if how == "5xx":
        silent = ScriptedParticipant(prepare_status=503)
    else:
        silent = ScriptedParticipant(prepare_delay_s=1.0)
    async with (
        serve(ok.app()) as uo,
        serve(silent.app()) as us,
        running_node(node_db, prepare_timeout_s=0.3) as c,
    ):
        txid = await begin(c)
        await enlist(c, txid, "ok", uo)
        await enlist(c, txid, "silent", us)
        r = await c.post(f"/v1/transactions/{txid}/commit")
        assert r.status_code == 409, r.text
        assert ("prepare", txid) in silent.calls

        async def told() -> bool:
            return txid in silent.aborted

        await wait_for(told)
        assert txid in ok.aborted and not silent.committed and not ok.committed
        t = (await c.get(f"/v1/transactions/{txid}")).json()
        assert t["state"] == "aborted"
        s = next(p for p in t["participants"] if p["name"] == "silent")
        assert s["vote"] == "no" and s["phase2"] == "not_needed"


async def test_phase2_participant_down_then_back_completes(node_db: str) -> None:
    p = ScriptedParticipant(phase2_status=503)
    async with serve(p.app()) as up, running_node(node_db) as c:
        txid = await begin(c)
        await enlist(c, txid, "p", up, vote="yes")
        r = await c.post(f"/v1/transactions/{txid}/commit")
        assert r.status_code == 200 and r.json()["outcome"] == "commit"
        assert r.json()["state"] == "committing"
        t = (await c.get(f"/v1/transactions/{txid}")).json()
        assert t["participants"][0]["attempts"] >= 1
        assert "503" in t["participants"][0]["last_error"]
        p.phase2_status = None

        async def done() -> bool:
            return (await c.get(f"/v1/transactions/{txid}")).json()["state"] == "committed"

        await wait_for(done)
        assert txid in p.committed


async def test_concurrent_duplicate_commits_run_2pc_once(node_db: str) -> None:
    p = ScriptedParticipant(prepare_delay_s=0.2)
    async with serve(p.app()) as up, running_node(node_db) as c:
        txid = await begin(c)
        await enlist(c, txid, "p", up)
        rs = await asyncio.gather(*(c.post(f"/v1/transactions/{txid}/commit") for _ in range(5)))
        assert {r.status_code for r in rs} == {200}
        assert {r.json()["outcome"] for r in rs} == {"commit"}
        assert p.calls.count(("prepare", txid)) == 1


async def test_restart_resumes_phase2_and_the_log(node_db: str) -> None:
    p = ScriptedParticipant(phase2_status=503)
    async with serve(p.app()) as up:
        async with running_node(node_db) as c:
            txid = await begin(c)
            await enlist(c, txid, "p", up, vote="yes")
            r = await c.post(f"/v1/transactions/{txid}/commit")
            assert r.json()["state"] == "committing"
            index_before = (await c.get("/v1/cluster")).json()["commit_index"]
        p.phase2_status = None
        assert txid not in p.committed
        async with running_node(node_db) as c2:

            async def done() -> bool:
                return (await c2.get(f"/v1/transactions/{txid}")).json()["state"] == "committed"

            await wait_for(done)
            assert txid in p.committed
            assert (await c2.get("/v1/cluster")).json()["commit_index"] > index_before


async def test_expired_transactions_are_aborted_also_across_a_restart(node_db: str) -> None:
    p = ScriptedParticipant()
    async with serve(p.app()) as up:
        async with running_node(node_db) as c:
            live = await begin(c, timeout_s=0.3)
            await enlist(c, live, "p", up)

            async def aborted() -> bool:
                return (await c.get(f"/v1/transactions/{live}")).json()["state"] == "aborted"

            await wait_for(aborted)
            assert live in p.aborted
            stopped = await begin(c, timeout_s=0.5)
        await asyncio.sleep(0.6)
        async with running_node(node_db) as c2:

            async def aborted2() -> bool:
                t = (await c2.get(f"/v1/transactions/{stopped}")).json()
                return bool(t["state"] == "aborted" and "timed out" in t["decision_reason"])

            await wait_for(aborted2)
            r = await c2.post(f"/v1/transactions/{stopped}/commit")
            assert r.status_code == 409


async def test_outcome_pending_then_presumed_abort_is_durable(node_db: str) -> None:
    async with running_node(node_db) as c:
        txid = await begin(c)
        assert (await c.get(f"/v1/transactions/{txid}/outcome")).json()["outcome"] == "pending"
        unknown = "never-begun-1"
        assert (await c.get(f"/v1/transactions/{unknown}/outcome")).json()["outcome"] == "abort"
        t = (await c.get(f"/v1/transactions/{unknown}")).json()
        assert t["state"] == "aborted" and "presumed abort" in t["decision_reason"]
        r = await c.post(f"/v1/transactions/{unknown}/commit")
        assert r.status_code == 409
        abort = await c.post(f"/v1/transactions/{txid}/abort")
        assert abort.status_code == 200 and abort.json()["state"] == "aborted"
        assert (await c.post(f"/v1/transactions/{txid}/abort")).status_code == 200


async def test_idempotency_key_names_one_transaction(node_db: str) -> None:
    async with running_node(node_db) as c:
        r1 = await c.post("/v1/transactions", json={"idempotency_key": "order-7"})
        r2 = await c.post("/v1/transactions", json={"idempotency_key": "order-7", "timeout_s": 5})
        assert r1.status_code == 201 and r2.status_code == 200
        assert r1.json()["txid"] == r2.json()["txid"]
        assert r2.json()["timeout_s"] == r1.json()["timeout_s"]


async def test_list_filters_and_pagination(node_db: str) -> None:
    p = ScriptedParticipant()
    async with serve(p.app()) as up, running_node(node_db) as c:
        ids = [await begin(c, labels={"batch": "x" if i % 2 else "y"}) for i in range(5)]
        await enlist(c, ids[0], "special", up)
        await c.post(f"/v1/transactions/{ids[1]}/abort")
        page1 = (await c.get("/v1/transactions", params={"limit": 2})).json()
        assert len(page1["items"]) == 2 and page1["next_cursor"]
        seen = [t["txid"] for t in page1["items"]]
        cursor = page1["next_cursor"]
        while cursor:
            page = (await c.get("/v1/transactions", params={"limit": 2, "cursor": cursor})).json()
            seen += [t["txid"] for t in page["items"]]
            cursor = page["next_cursor"]
        assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
        xs = (await c.get("/v1/transactions", params={"label": "batch:x"})).json()["items"]
        assert {t["txid"] for t in xs} == {ids[1], ids[3]}
        aborted = (await c.get("/v1/transactions", params={"state": "aborted"})).json()["items"]
        assert [t["txid"] for t in aborted] == [ids[1]]
        special = (await c.get("/v1/transactions", params={"participant": "special"})).json()[
            "items"
        ]
        assert [t["txid"] for t in special] == [ids[0]]
        old = (await c.get("/v1/transactions", params={"min_age_s": 3600})).json()["items"]
        assert old == []


BAD_INPUT = [
    ("POST", "/v1/transactions", b"{not json", 400, "malformed_json"),
    ("POST", "/v1/transactions", b'{"timeout_s": "soon"}', 422, "invalid_request"),
    ("POST", "/v1/transactions", b'{"timeout_s": -1}', 422, "invalid_request"),
    ("POST", "/v1/transactions", b'{"surprise": 1}', 422, "invalid_request"),
    ("POST", "/v1/transactions", b'{"labels": {"k": 5}}', 422, "invalid_request"),
    ("POST", "/v1/transactions", b"[1, 2]", 422, "invalid_request"),
    (
        "POST",
        "/v1/transactions",
        b'{"labels": {"k": "' + b"v" * 70000 + b'"}}',
        413,
        "body_too_large",
    ),
    ("GET", "/v1/transactions/unknown-tx", None, 404, "not_found"),
    ("GET", "/v1/transactions/bad%20id", None, 400, "invalid_txid"),
    ("POST", "/v1/transactions/unknown-tx/commit", None, 404, "not_found"),
    ("POST", "/v1/transactions/unknown-tx/abort", None, 404, "not_found"),
    (
        "POST",
        "/v1/transactions/unknown-tx/participants",
        b'{"name": "a", "url": "http://a"}',
        404,
        "not_found",
    ),
    ("GET", "/v1/transactions?state=bogus", None, 422, "invalid_request"),
    ("GET", "/v1/transactions?label=nocolon", None, 400, "invalid_filter"),
    ("GET", "/v1/transactions?cursor=garbage", None, 400, "invalid_cursor"),
    ("DELETE", "/v1/transactions", None, 405, "method_not_allowed"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), BAD_INPUT)
async def test_bad_input_gets_the_documented_status_and_shape(
    node_db: str, method: str, path: str, body: bytes | None, status: int, code: str
) -> None:
    async with running_node(node_db) as c:
        r = await c.request(
            method, path, content=body, headers={"content-type": "application/json"}
        )
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["code"] == code and err["message"]
        # Nothing was half-applied: no transaction exists after a refused begin.
        if method == "POST" and path == "/v1/transactions":
            assert (await c.get("/v1/transactions")).json()["items"] == []


@pytest.mark.parametrize(
    "enlist_body",
    [
        {"name": "a", "url": "ftp://host/x"},
        {"name": "a", "url": "javascript:alert(1)"},
        {"name": "a", "url": "http://"},
        {"name": "a", "url": "http://u:p@host/x"},
        {"name": "a b", "url": "http://host"},
        {"name": "a", "url": "http://host", "vote": "no"},
        {"name": "a", "url": "http://host", "extra": True},
    ],
)
async def test_bad_enlistments_are_refused_and_nothing_is_enlisted(
    node_db: str, enlist_body: dict[str, Any]
) -> None:
    async with running_node(node_db) as c:
        txid = await begin(c)
        r = await c.post(f"/v1/transactions/{txid}/participants", json=enlist_body)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid_request"
        assert (await c.get(f"/v1/transactions/{txid}")).json()["participants"] == []


async def test_health_ready_metrics_cluster(node_db: str) -> None:
    async with running_node(node_db) as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        assert (await c.get("/readyz")).json() == {"status": "ready"}
        await begin(c)
        m = (await c.get("/metrics")).text
        assert "txc_transactions_begun_total 1.0" in m and "txc_transactions_in_flight 1.0" in m
        cl = (await c.get("/v1/cluster")).json()
        assert (
            cl["leader"] == "node1"
            and cl["members"][0]["role"] == "leader"
            and cl["commit_index"] >= 1
        )
