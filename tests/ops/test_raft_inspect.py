"""`txc raft log` and `txc raft state` on a standalone node's database and on a real Raft
group's node database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from tests.conftest import PgServer
from tests.helpers import ScriptedParticipant, serve
from tests.ops.helpers import txc, txc_json
from tests.processes import cluster_of
from tests.test_node import begin, enlist, running_node, wait_for


async def test_standalone_node_log_and_state(node_db: str) -> None:
    p = ScriptedParticipant()
    async with serve(p.app()) as up, running_node(node_db) as c:
        txid = await begin(c, labels={"order": "7"})
        await enlist(c, txid, "shop", up)
        assert (await c.post(f"/v1/transactions/{txid}/commit")).json()["state"] == "committed"

    code, log = await asyncio.to_thread(txc_json, "raft", "log", "--database-url", node_db)
    assert code == 0
    kinds = [cmd["type"] for e in log["entries"] for cmd in e["commands"]]
    assert kinds[:4] == ["begin", "enlist", "start_prepare", "vote"]
    assert "decide" in kinds and kinds[-1] == "ack"
    assert {cmd["txid"] for e in log["entries"] for cmd in e["commands"]} == {txid}
    assert log["last_index"] == log["entries"][-1]["index"] == len(log["entries"])

    code, page = await asyncio.to_thread(
        txc_json, "raft", "log", "--database-url", node_db, "--from", "2", "--limit", "2"
    )
    assert code == 0 and [e["index"] for e in page["entries"]] == [2, 3]
    code, out, _ = await asyncio.to_thread(
        txc, "raft", "log", "--database-url", node_db, "--limit", "3"
    )
    assert code == 0 and "INDEX" in out and "ack " + txid in out

    code, st = await asyncio.to_thread(txc_json, "raft", "state", "--database-url", node_db)
    assert code == 0, st
    assert st["mode"] == "standalone" and st["problems"] == []
    assert st["applied"]["last_applied"] == st["log"]["last_index"] == log["last_index"]
    assert st["hard_state"]["commit_index"] == log["last_index"]
    assert st["transactions"] == {"committed": 1}
    code, out, _ = await asyncio.to_thread(txc, "raft", "state", "--database-url", node_db)
    assert code == 0 and "standalone" in out and "consistent" in out


async def test_state_counts_what_retention_left(node_db: str) -> None:
    """Tombstones (and purged ones whose rows wait), the horizon, the node's history; a txid
    that is both a record and a tombstone is a problem."""
    p = ScriptedParticipant()
    forgetting = {"retention_s": 0.5, "tombstone_retention_s": 30.0}
    async with serve(p.app()) as up, running_node(node_db, **forgetting) as c:
        txid = await begin(c)
        await enlist(c, txid, "shop", up)
        assert (await c.post(f"/v1/transactions/{txid}/commit")).json()["state"] == "committed"

        async def in_history() -> bool:
            r = await c.get(f"/v1/transactions/{txid}")
            return r.json().get("source") == "history"

        await wait_for(in_history, within_s=20)
        live = await begin(c, timeout_s=600)

    code, st = await asyncio.to_thread(txc_json, "raft", "state", "--database-url", node_db)
    assert code == 0 and st["problems"] == [], st
    assert st["transactions"] == {"active": 1}
    ret = st["retention"]
    assert ret["tombstones"] == 1 and ret["purged_tombstones"] == 0
    assert ret["history_rows"] == 1 and ret["record_and_tombstone"] == 0
    # No purge yet: none is proposed before a tombstone is due (tombstone_retention_s).
    assert ret["tombstone_horizon"] is None
    code, out, _ = await asyncio.to_thread(txc, "raft", "state", "--database-url", node_db)
    assert code == 0 and "retention:  tombstones 1, horizon " in out
    assert "history (forgotten transactions) 1" in out

    code, log = await asyncio.to_thread(
        txc_json, "raft", "log", "--database-url", node_db, "--limit", "1000"
    )
    summaries = [e["summary"] for e in log["entries"]]
    assert f"forget {txid}" in summaries
    assert not any(x.startswith("purge_tombstones") for x in summaries)

    # Planted: a purged tombstone not deleted yet, and one for the live record.
    engine = create_engine(node_db)
    try:
        with engine.begin() as conn:
            h = 1.0e9  # as if a purge had run: a horizon well before the real tombstone
            conn.execute(text("UPDATE txc_applied SET tombstone_horizon = :h"), {"h": h})
            for t, at in (("purged-1", h - 1), (live, h + 1)):
                conn.execute(
                    text("INSERT INTO txc_tombstones VALUES (:t, 'abort', :a, :a, :a, :a)"),
                    {"t": t, "a": at},
                )
    finally:
        engine.dispose()
    code, st = await asyncio.to_thread(txc_json, "raft", "state", "--database-url", node_db)
    assert code == 6, st
    ret = st["retention"]
    assert ret["tombstones"] == 2 and ret["purged_tombstones"] == 1
    assert ret["record_and_tombstone"] == 1
    assert st["problems"] == [
        "1 txid(s) have both a record and a tombstone (the node refuses to read them)"
    ]
    code, out, _ = await asyncio.to_thread(txc, "raft", "state", "--database-url", node_db)
    assert code == 6 and "(+1 purged, awaiting deletion)" in out and "PROBLEMS:" in out


async def test_not_a_node_database(db_url: str) -> None:
    for cmd in (("raft", "state"), ("raft", "log"), ("backup", "--out", "/dev/null")):
        code, _, err = await asyncio.to_thread(txc, *cmd, "--database-url", db_url)
        assert code == 3, (cmd, err)


async def test_raft_node_log_and_state(pg: PgServer, tmp_path: Path) -> None:
    with cluster_of(pg, tmp_path, 3) as cluster:
        leader = cluster.leader()
        async with httpx.AsyncClient(base_url=leader.url, timeout=30) as c:
            txid = await begin(c)
            r = await c.post(f"/v1/transactions/{txid}/commit")
            assert r.json()["state"] == "committed", r.text
            # A list is answered by the database: the leader checkpoints first, so its
            # database holds what it applied (coordinator/checkpoint.py).
            assert (await c.get("/v1/transactions")).status_code == 200
        db = leader.env["TXC_DATABASE_URL"]

        code, log = await asyncio.to_thread(
            txc_json, "raft", "log", "--database-url", db, "--from", "1", "--limit", "1000"
        )
        assert code == 0
        first = log["entries"][0]
        assert first["index"] == 1 and first["kind"] == "conf_change"
        assert first["conf_change"]["op"] == "bootstrap"
        assert first["conf_change"]["voters"] == [1, 2, 3]
        types = {e["type"] for e in log["entries"]}
        assert {"no-op", "commands"} <= types
        cmds = [c for e in log["entries"] if e["type"] == "commands" for c in e["commands"]]
        assert [c["type"] for c in cmds if c["txid"] == txid][:2] == ["begin", "start_prepare"]

        code, st = await asyncio.to_thread(txc_json, "raft", "state", "--database-url", db)
        assert code == 0, st
        assert st["mode"] == "raft" and st["problems"] == []
        assert st["hard_state"]["term"] >= 1 and str(st["hard_state"]["vote"]).isdigit()
        assert st["hard_state"]["commit_index"] >= st["applied"]["last_applied"] >= 1
        assert sorted(st["members"]) == ["1", "2", "3"]
        assert st["transactions"] == {"committed": 1}
        assert st["retention"]["tombstones"] == st["retention"]["history_rows"] == 0
        code, out, _ = await asyncio.to_thread(txc, "raft", "state", "--database-url", db)
        assert code == 0 and "raft" in out and "members:    1=http" in out
