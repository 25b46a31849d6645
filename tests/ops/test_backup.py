"""`txc backup` -> `txc restore` into an empty database -> a node started on it has the same
transactions, states and timelines, and new transactions work. Restoring into a database
that is not empty, or from a damaged file, is refused."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from coordinator import snapshot_codec
from coordinator.db import make_engine as make_async_engine
from coordinator.embedded_pg import free_port
from coordinator.model import Outcome
from coordinator.store import Store
from tests.conftest import PgServer
from tests.helpers import ScriptedParticipant, serve
from tests.ops.helpers import txc, txc_json
from tests.test_node import begin, enlist, running_node, wait_for


async def snapshot_of(c: httpx.AsyncClient, txids: list[str]) -> dict[str, Any]:
    out = {}
    for txid in txids:
        r = await c.get(f"/v1/transactions/{txid}")
        assert r.status_code == 200, r.text
        t = r.json()
        r = await c.get(f"/v1/transactions/{txid}/timeline")
        assert r.status_code == 200, r.text
        out[txid] = {"transaction": t, "timeline": r.json()["events"]}
    return out


async def commit_new(c: httpx.AsyncClient, participant_url: str) -> list[dict[str, Any]]:
    txid = await begin(c)
    await enlist(c, txid, "shop", participant_url)
    r = await c.post(f"/v1/transactions/{txid}/commit")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "committed"
    return (await c.get(f"/v1/transactions/{txid}/timeline")).json()["events"]  # type: ignore[no-any-return]


def as_version_1(v2: Path, out: Path) -> None:
    """The same backup as `txc backup` wrote it before retention: one JSON document,
    version 1, its digest over transactions, timelines and members."""
    lines = [json.loads(x) for x in v2.read_text().splitlines()]
    header = lines[0]
    rows: dict[str, list[Any]] = {"transactions": [], "history": []}
    for chunk in lines[1:-1]:
        rows[chunk["section"]] += chunk["rows"]  # KeyError: tombstones or history
    content = {**rows, "members": header["members"]}
    blob = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    doc = {
        "format": "txc-backup",
        "version": 1,
        **{k: header[k] for k in ("created_at", "source", "applied", "snapshot", "counts")},
        "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
        **content,
    }
    out.write_text(json.dumps(doc, separators=(",", ":")) + "\n")


async def test_backup_restore_standalone_and_raft_seed(
    pg: PgServer, node_db: str, tmp_path: Path
) -> None:
    ok, no = ScriptedParticipant(), ScriptedParticipant(vote="no")
    backup = tmp_path / "txc-backup.json"
    async with serve(ok.app()) as uok, serve(no.app()) as uno:
        async with running_node(node_db) as c:
            committed = await begin(c, labels={"order": "1"})
            await enlist(c, committed, "shop", uok)
            await enlist(c, committed, "bank", uok, vote="yes")
            assert (await c.post(f"/v1/transactions/{committed}/commit")).status_code == 200
            aborted = await begin(c)
            await enlist(c, aborted, "shop", uok)
            await enlist(c, aborted, "bank", uno)
            assert (await c.post(f"/v1/transactions/{aborted}/commit")).status_code == 409
            active = await begin(c, timeout_s=600)
            await enlist(c, active, "shop", uok)
            txids = [committed, aborted, active]
            before = await snapshot_of(c, txids)

            # A backup of a running node.
            code, summary = await asyncio.to_thread(
                txc_json, "backup", "--database-url", node_db, "--out", str(backup)
            )
            assert code == 0, summary
            assert summary["transactions"] == 3
            assert summary["counts"] == {"committed": 1, "aborted": 1, "active": 1}
        lines = backup.read_text().splitlines()
        header, end = json.loads(lines[0]), json.loads(lines[-1])
        assert header["format"] == "txc-backup" and header["version"] == 2
        assert header["source"]["mode"] == "standalone"
        assert summary["history_rows"] > 0
        assert end["end"]["rows"] == {
            "transactions": 3,
            "history": summary["history_rows"],
            "tombstones": 0,
            "archive": 0,
        }
        assert end["digest"] == summary["digest"]

        # Refused: a database that holds a node's state.
        code, _, err = await asyncio.to_thread(
            txc, "restore", "--database-url", node_db, "--in", str(backup)
        )
        assert code == 4 and "refusing to restore" in err and "txc_log" in err, err

        # Refused: a damaged or edited file, or one cut short.
        edited = tmp_path / "edited.json"
        chunk = json.loads(lines[1])
        assert chunk["section"] == "transactions"
        chunk["rows"][0]["labels"] = {"edited": "yes"}
        edited.write_text("\n".join([lines[0], json.dumps(chunk), *lines[2:]]) + "\n")
        fresh = pg.new_database("restored")
        code, _, err = await asyncio.to_thread(
            txc, "restore", "--database-url", fresh, "--in", str(edited)
        )
        assert code == 1 and "digest mismatch" in err, err
        edited.write_text("\n".join(lines[:-1]) + "\n")
        code, _, err = await asyncio.to_thread(
            txc, "restore", "--database-url", fresh, "--in", str(edited)
        )
        assert code == 1 and "truncated" in err, err

        # Standalone restore into an empty database; a node starts on it.
        code, res = await asyncio.to_thread(
            txc_json, "restore", "--database-url", fresh, "--in", str(backup)
        )
        assert code == 0, res
        assert res["mode"] == "standalone" and res["in_flight"] == 1
        code, st = await asyncio.to_thread(txc_json, "raft", "state", "--database-url", fresh)
        assert code == 0 and st["problems"] == [] and st["mode"] == "standalone", st
        assert st["applied"]["last_applied"] == st["log"]["last_index"] == res["applied_index"]
        async with running_node(fresh) as c:
            assert await snapshot_of(c, txids) == before
            timeline = await commit_new(c, uok)
            assert timeline[0]["index"] == res["applied_index"] + 1
            # The restored active transaction is still live: it can commit.
            r = await c.post(f"/v1/transactions/{active}/commit")
            assert r.json()["state"] == "committed", r.text
        code, _, _ = await asyncio.to_thread(txc, "raft", "state", "--database-url", fresh)
        assert code == 0

        # A version-1 file (before retention: no tombstones, horizon or history) restores.
        v1 = tmp_path / "txc-backup-v1.json"
        as_version_1(backup, v1)
        old = pg.new_database("restored_v1")
        code, res = await asyncio.to_thread(
            txc_json, "restore", "--database-url", old, "--in", str(v1)
        )
        assert code == 0, res
        assert res["backup_version"] == 1 and res["transactions"] == 3
        assert res["tombstones"] == res["archive_rows"] == 0
        async with running_node(old) as c:
            assert await snapshot_of(c, txids) == before
        # Now that it holds state, a second restore into it is refused.
        code, _, err = await asyncio.to_thread(
            txc, "restore", "--database-url", fresh, "--in", str(backup)
        )
        assert code == 4, err

        # Seeding a new Raft group (here: of one voter) from the same backup.
        seed = pg.new_database("seed")
        port = free_port()
        peers = f"1=http://127.0.0.1:{port}"
        code, res = await asyncio.to_thread(
            txc_json, "restore", "--database-url", seed, "--in", str(backup), "--peers", peers
        )
        assert code == 0 and res["mode"] == "raft-seed", res
        code, st = await asyncio.to_thread(txc_json, "raft", "state", "--database-url", seed)
        assert code == 0 and st["mode"] == "raft" and st["problems"] == [], st
        assert st["snapshot"]["config"] == {"voters": [1], "learners": []}
        raft = {"peers": peers, "raft_id": 1, "cluster_secret": "s"}
        async with running_node(seed, port=port, **raft) as c:

            async def ready() -> bool:
                return (await c.get("/readyz")).status_code == 200

            await wait_for(ready)
            assert await snapshot_of(c, txids) == before
            timeline = await commit_new(c, uok)
            assert timeline[0]["index"] > res["applied_index"]


async def test_a_forgotten_transaction_keeps_its_outcome_through_backup_and_restore(
    pg: PgServer, node_db: str, tmp_path: Path
) -> None:
    """Retention forgot a committed transaction (its record is a tombstone, its full record
    in the node's history): a restored node, standalone or seeding a group, still answers
    COMMIT for it, and shows it from its history."""
    p = ScriptedParticipant()
    backup = tmp_path / "txc-backup.json"
    forgetting = {"retention_s": 0.5, "tombstone_retention_s": 30.0}
    async with serve(p.app()) as up:
        async with running_node(node_db, **forgetting) as c:
            committed = await begin(c, labels={"order": "F-1"})
            await enlist(c, committed, "shop", up)
            assert (await c.post(f"/v1/transactions/{committed}/commit")).status_code == 200

            async def in_history() -> bool:
                r = await c.get(f"/v1/transactions/{committed}")
                return r.json().get("source") == "history"

            await wait_for(in_history, within_s=20)
            original = (await c.get(f"/v1/transactions/{committed}")).json()
            timeline = (await c.get(f"/v1/transactions/{committed}/timeline")).json()["events"]
            active = await begin(c, timeout_s=600)  # a live record beside the forgotten one
            retention = (await c.get("/v1/cluster/retention")).json()
            assert retention["tombstones"] == 1 and retention["history_rows"] == 1
        # A purged tombstone whose row the node has not deleted yet: not in a backup. (No
        # purge ran: none is proposed before a tombstone is due. Move the horizon by hand, to
        # well before the real tombstone.)
        engine = create_engine(node_db)
        with engine.begin() as conn:
            conn.execute(text("UPDATE txc_applied SET tombstone_horizon = :h"), {"h": 1.0e9})
            horizon = conn.execute(text("SELECT tombstone_horizon FROM txc_applied")).scalar()
            assert horizon and horizon > 0
            conn.execute(
                text(
                    "INSERT INTO txc_tombstones VALUES ('purged-1', 'commit', :h - 9, :h - 8, "
                    ":h - 7, :h - 1)"
                ),
                {"h": horizon},
            )
        engine.dispose()

        code, summary = await asyncio.to_thread(
            txc_json, "backup", "--database-url", node_db, "--out", str(backup)
        )
        assert code == 0, summary
        assert summary["transactions"] == 1 and summary["counts"] == {"active": 1}
        assert summary["tombstones"] == 1 and summary["archive_rows"] == 1
        code, out, _ = await asyncio.to_thread(
            txc, "backup", "--database-url", node_db, "--out", str(tmp_path / "again.json")
        )
        assert code == 0 and "tombstones 1" in out and "forgotten transactions) 1" in out

        async def check(c: httpx.AsyncClient) -> None:
            # The decision: a participant's question, a client's repeated commit.
            r = await c.get(f"/v1/transactions/{committed}/outcome")
            assert r.json() == {"txid": committed, "outcome": "commit"}, r.text
            r = await c.post(f"/v1/transactions/{committed}/commit")
            assert r.status_code == 200 and r.json()["outcome"] == "commit", r.text
            # The full record, from the restored history, forgotten when it was.
            got = (await c.get(f"/v1/transactions/{committed}")).json()
            assert got == original and got["source"] == "history"
            tl = (await c.get(f"/v1/transactions/{committed}/timeline")).json()["events"]
            assert tl == timeline
            listed = (await c.get("/v1/transactions", params={"finished": "true"})).json()
            assert [t["txid"] for t in listed["items"]] == [committed]
            assert (await c.get("/v1/transactions/purged-1")).status_code == 404
            assert (await c.get(f"/v1/transactions/{active}")).json()["state"] == "active"

        # Standalone restore: through the restored database's Store and through a node.
        fresh = pg.new_database("restored_forgotten")
        code, res = await asyncio.to_thread(
            txc_json, "restore", "--database-url", fresh, "--in", str(backup)
        )
        assert code == 0, res
        assert res["tombstones"] == 1 and res["archive_rows"] == 1
        assert res["tombstone_horizon"] is not None  # its value: `horizon`, checked below
        store = Store(make_async_engine(fresh))
        try:
            await store.load_inflight()
            assert store.tombstone_horizon == horizon
            t = await store.get(committed)
            assert t is not None and t.outcome is Outcome.COMMIT and t.forgotten_at is not None
            assert await store.get("purged-1") is None
        finally:
            await store.engine.dispose()
        async with running_node(fresh) as c:
            await check(c)

        # Seeding a Raft group: the snapshot carries the tombstone and the horizon too (what
        # a member that joins later installs).
        seed = pg.new_database("seed_forgotten")
        port = free_port()
        peers = f"1=http://127.0.0.1:{port}"
        code, res = await asyncio.to_thread(
            txc_json, "restore", "--database-url", seed, "--in", str(backup), "--peers", peers
        )
        assert code == 0 and res["mode"] == "raft-seed", res
        engine = create_engine(seed)
        with engine.connect() as conn:
            data = conn.execute(text("SELECT data FROM txc_snapshot")).scalar()
        engine.dispose()
        snap = json.loads(snapshot_codec.unpack(bytes(data)))
        assert [r["txid"] for r in snap["transactions"]] == [active]
        assert [r[0] for r in snap["tombstones"]] == [committed]
        assert snap["tombstone_horizon"] == horizon
        assert snap["members"] == {"1": f"http://127.0.0.1:{port}"}
        raft = {"peers": peers, "raft_id": 1, "cluster_secret": "s"}
        async with running_node(seed, port=port, **raft) as c:

            async def ready() -> bool:
                return (await c.get("/readyz")).status_code == 200

            await wait_for(ready)
            await check(c)
