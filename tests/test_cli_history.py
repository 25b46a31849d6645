"""`txc list --finished` and `txc show` for transactions that retention has forgotten, against
a real node whose records are forgotten half a second after they finish: the full record from
the node's history (with when it was forgotten), the tombstone when the history lacks it, and
clear messages for what is not there."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from tests.helpers import ScriptedParticipant, serve
from tests.ops.helpers import txc, txc_json
from tests.test_node import begin, enlist, node_db, running_node, wait_for

__all__ = ["node_db"]  # the fixture, for pytest

# Records leave the replicated state this long after they finish (the leader's retention
# pass runs every second); tombstones stay the minimum, longer than the test runs.
FORGETTING = dict(retention_s=0.5, tombstone_retention_s=30.0)


async def committed_and_forgotten(c: httpx.AsyncClient, participant_url: str) -> str:
    txid = await begin(c, labels={"order": "H-1"})
    assert (await enlist(c, txid, "shop", participant_url)).status_code == 201
    r = await c.post(f"/v1/transactions/{txid}/commit")
    assert r.json()["state"] == "committed", r.text
    await forgotten(c, txid)
    return txid


async def forgotten(c: httpx.AsyncClient, txid: str) -> dict[str, Any]:
    """Wait until the node answers `txid` from its history (forgotten, and the checkpoint
    that wrote its history row done)."""
    seen: dict[str, Any] = {}

    async def in_history() -> bool:
        seen.update((await c.get(f"/v1/transactions/{txid}")).json())
        return seen.get("source") == "history"

    await wait_for(in_history, within_s=20)
    return seen


async def test_list_finished_and_show_a_forgotten_transaction(node_db: str) -> None:
    p = ScriptedParticipant()
    async with serve(p.app()) as up, running_node(node_db, **FORGETTING) as c:
        url = str(c.base_url)
        code, out, err = await asyncio.to_thread(txc, "--url", url, "list", "--finished")
        assert code == 0, err
        assert "no forgotten transaction in the history yet" in out

        txid = await committed_and_forgotten(c, up)
        live = await begin(c, timeout_s=600)  # in flight: in the live list, not the history

        # The history, as JSON and as a table with the time it was forgotten.
        code, data = await asyncio.to_thread(txc_json, "--url", url, "list", "--finished")
        assert code == 0, data
        assert data["source"] == "history"
        assert [t["txid"] for t in data["items"]] == [txid]
        item = data["items"][0]
        assert item["state"] == "committed" and item["forgotten_at"]
        assert [pt["name"] for pt in item["participants"]] == ["shop"]
        code, out, err = await asyncio.to_thread(txc, "--url", url, "list", "--finished")
        assert code == 0, err
        assert out.startswith("history: ") and "FORGOTTEN" in out.splitlines()[1]
        row = next(line for line in out.splitlines() if line.startswith(txid))
        assert "committed" in row and "shop:yes/done" in row and item["forgotten_at"] in row
        # The filters of the live list apply.
        code, out, _ = await asyncio.to_thread(
            txc, "--url", url, "list", "--finished", "--label", "order:nope"
        )
        assert code == 0 and "no forgotten transaction in the history matches" in out
        code, data = await asyncio.to_thread(
            txc_json, "--url", url, "list", "--finished", "--label", "order:H-1"
        )
        assert [t["txid"] for t in data["items"]] == [txid]
        # The live list no longer holds it; it holds the one in flight.
        code, data = await asyncio.to_thread(txc_json, "--url", url, "list")
        assert code == 0 and [t["txid"] for t in data["items"]] == [live]

        # `show`: the full record from the history, where it came from, when it was forgotten.
        code, out, err = await asyncio.to_thread(txc, "--url", url, "show", txid)
        assert code == 0, err
        assert out.startswith("record: history (the replicated state has forgotten it"), out
        assert f"forgotten_at: {item['forgotten_at']}" in out
        assert "outcome: commit" in out and "order" in out
        assert "shop" in out and "PARTICIPANT" in out
        assert "begin" in out and "forget" in out  # its timeline, up to the Forget
        code, shown = await asyncio.to_thread(txc_json, "--url", url, "show", txid)
        assert shown["transaction"]["source"] == "history"
        assert shown["transaction"]["forgotten_at"] == item["forgotten_at"]
        assert shown["timeline"][0]["kind"] == "begin"

        # A live one says so.
        code, out, _ = await asyncio.to_thread(txc, "--url", url, "show", live)
        assert code == 0 and out.startswith("record: live record"), out
        assert "forgotten_at" not in out

        # A node without the full record (it caught up by snapshot, say) has the tombstone:
        # the decision, and that it is all that node keeps.
        engine = create_engine(node_db)
        try:
            with engine.begin() as conn:
                conn.execute(text("DELETE FROM txc_archive WHERE txid = :t"), {"t": txid})
        finally:
            engine.dispose()
        code, out, err = await asyncio.to_thread(txc, "--url", url, "show", txid)
        assert code == 0, err
        assert out.startswith("record: tombstone only"), out
        assert "outcome: commit" in out and f"forgotten_at: {item['forgotten_at']}" in out
        assert "participants: not kept in a tombstone" in out
        assert "Traceback" not in out + err
        code, out, _ = await asyncio.to_thread(txc, "--url", url, "list", "--finished")
        assert code == 0 and txid not in out

        # Unknown: exit 3 and one line that says what that can mean.
        code, out, err = await asyncio.to_thread(txc, "--url", url, "show", "no-such-txid")
        assert code == 3 and out == ""
        assert err.startswith("txc: transaction no-such-txid is not known to the coordinator"), err
        assert "Traceback" not in err


async def test_list_pages_through_the_history_with_the_cursor(node_db: str) -> None:
    p = ScriptedParticipant()
    async with serve(p.app()) as up, running_node(node_db, **FORGETTING) as c:
        url = str(c.base_url)
        txids = {await committed_and_forgotten(c, up) for _ in range(3)}
        code, first = await asyncio.to_thread(
            txc_json, "--url", url, "list", "--finished", "--limit", "2"
        )
        assert code == 0 and len(first["items"]) == 2 and first["next_cursor"]
        code, out, _ = await asyncio.to_thread(
            txc, "--url", url, "list", "--finished", "--limit", "2"
        )
        assert f"more: add --cursor {first['next_cursor']}" in out
        code, rest = await asyncio.to_thread(
            txc_json, "--url", url, "list", "--finished", "--limit", "2",
            "--cursor", first["next_cursor"],
        )  # fmt: skip
        assert code == 0 and rest["next_cursor"] is None
        assert {t["txid"] for t in first["items"] + rest["items"]} == txids


async def test_unreachable_coordinator_is_one_line() -> None:
    code, out, err = await asyncio.to_thread(
        txc, "--url", "http://127.0.0.1:9", "list", "--finished"
    )
    assert code == 5 and out == "" and "cannot reach the coordinator" in err
    assert "Traceback" not in err
