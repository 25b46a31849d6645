"""`txc recover` against a real participant database and a real coordinator node: a dry run
lists the right actions and changes nothing; --apply resolves; pending work is left alone."""

from __future__ import annotations

import asyncio

from participant_sdk import make_gid
from tests.conftest import PgServer
from tests.ops.helpers import ACCOUNTS, DEAD_URL, make_bank, txc, txc_json
from tests.test_node import begin, running_node

UNTOUCHED = dict.fromkeys(ACCOUNTS, 100)


async def test_recover_dry_run_then_apply(pg: PgServer, node_db: str) -> None:
    bank = make_bank(pg, "bank")
    try:
        async with running_node(node_db, phase2_inline_wait_s=0.2) as c:
            url = str(c.base_url)
            run = ("--url", url, "recover", "--participant", "bank", "--database-url", bank.url)

            # Committed at the coordinator; phase 2 cannot reach the bank (dead URL).
            committed = await begin(c)
            await asyncio.to_thread(bank.work, url, committed, "a", 10)
            r = await c.post(f"/v1/transactions/{committed}/commit")
            assert r.json()["outcome"] == "commit", r.text
            # Aborted at the coordinator.
            aborted = await begin(c)
            await asyncio.to_thread(bank.work, url, aborted, "b", 20)
            assert (await c.post(f"/v1/transactions/{aborted}/abort")).status_code == 200
            # Still active: must be left alone.
            pending = await begin(c, timeout_s=600)
            await asyncio.to_thread(bank.work, url, pending, "c", 30)
            # Died between PREPARE and the record: never enlisted.
            orphan = "orphan-1"
            bank.plant_prepared(orphan, "d", 40, record=False)
            # Recorded and prepared, but the coordinator never heard of it.
            unknown = "unknown-1"
            bank.plant_prepared(unknown, "e", 50, record=True)

            before = bank.prepared()
            assert len(before) == 5
            assert bank.balances() == UNTOUCHED

            code, report = await asyncio.to_thread(txc_json, *run)
            assert code == 6, report
            actions = {i["txid"]: i["action"] for i in report["items"]}
            assert actions == {
                committed: "would_commit",
                aborted: "would_abort",
                pending: "left_pending",
                orphan: "would_abort_orphan",
                unknown: "would_abort",
            }
            notes = {i["txid"]: i["note"] for i in report["items"]}
            assert "presumed abort" in notes[unknown]
            # The dry run changed nothing, here or at the coordinator.
            assert bank.prepared() == before
            assert bank.balances() == UNTOUCHED
            assert bank.record(unknown) == "prepared" and bank.record(orphan) is None
            assert (await c.get(f"/v1/transactions/{unknown}")).status_code == 404

            code, out, _ = await asyncio.to_thread(txc, *run)
            assert code == 6
            assert "dry run" in out and "would_commit" in out and "COMMIT PREPARED" in out

            code, report = await asyncio.to_thread(txc_json, *run, "--apply")
            assert code == 7, report  # the pending one is still in doubt
            actions = {i["txid"]: i["action"] for i in report["items"]}
            assert actions == {
                committed: "committed",
                aborted: "rolled_back",
                pending: "left_pending",
                orphan: "rolled_back_orphan",
                unknown: "rolled_back",
            }
            assert bank.prepared() == [make_gid("bank", pending)]
            assert bank.balances() == {**UNTOUCHED, "a": 110}
            assert bank.record(committed) == "committed"
            assert bank.record(aborted) == "aborted" and bank.record(orphan) == "aborted"
            # Asking about the unknown transaction made its abort durable (presumed abort).
            t = (await c.get(f"/v1/transactions/{unknown}")).json()
            assert t["outcome"] == "abort"

            # Coordinator unreachable: the undecided one cannot be resolved.
            dead = (*run[2:], "--coordinator-url", DEAD_URL)
            code, _, err = await asyncio.to_thread(txc, "--url", url, *dead)
            assert code == 5, err

            # Once the last one is decided, recover finishes and reports a clean database.
            assert (await c.post(f"/v1/transactions/{pending}/abort")).status_code == 200
            code, report = await asyncio.to_thread(txc_json, *run, "--apply")
            assert code == 0, report
            assert bank.prepared() == []
            assert bank.balances() == {**UNTOUCHED, "a": 110}
            code, report = await asyncio.to_thread(txc_json, *run)
            assert code == 0 and report["items"] == []
    finally:
        bank.cleanup()


async def test_recover_refuses_a_database_that_is_not_a_participant(
    pg: PgServer, node_db: str
) -> None:
    code, out, err = await asyncio.to_thread(
        txc, "recover", "--participant", "bank", "--database-url", node_db
    )
    assert code == 2 and "txc_participant_record" in err, (out, err)
    code, _, err = await asyncio.to_thread(
        txc, "recover", "--participant", "bad name", "--database-url", node_db
    )
    assert code == 2, err
