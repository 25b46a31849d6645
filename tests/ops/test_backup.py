"""`txc backup` -> `txc restore` into an empty database -> a node started on it has the same
transactions, states and timelines, and new transactions work. Restoring into a database
that is not empty, or from a damaged file, is refused."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from coordinator.embedded_pg import free_port
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
        doc = json.loads(backup.read_text())
        assert doc["format"] == "txc-backup" and doc["version"] == 1
        assert doc["source"]["mode"] == "standalone"

        # Refused: a database that holds a node's state.
        code, _, err = await asyncio.to_thread(
            txc, "restore", "--database-url", node_db, "--in", str(backup)
        )
        assert code == 4 and "refusing to restore" in err and "txc_log" in err, err

        # Refused: a damaged or edited file.
        edited = tmp_path / "edited.json"
        doc["transactions"][0]["labels"] = {"edited": "yes"}
        edited.write_text(json.dumps(doc))
        fresh = pg.new_database("restored")
        code, _, err = await asyncio.to_thread(
            txc, "restore", "--database-url", fresh, "--in", str(edited)
        )
        assert code == 1 and "digest mismatch" in err, err

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
