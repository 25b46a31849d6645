"""`txc audit`: a clean system is clean (exit 0); a planted orphan and a planted heuristic
mismatch are reported (exit 6). Plus the classification rules one by one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

from coordinator.embedded_pg import free_port
from coordinator.ops.audit import Local, classify
from tests.conftest import PgServer
from tests.helpers import serve
from tests.ops.helpers import Bank, make_bank, txc, txc_json
from tests.test_node import begin, running_node


@contextlib.asynccontextmanager
async def serving(bank: Bank, coordinator_url: str) -> AsyncIterator[None]:
    """The bank's protocol endpoints, so that phase 2 reaches it."""
    port = free_port()
    bank.public_url = f"http://127.0.0.1:{port}"
    rm = bank.manager(coordinator_url)
    app = FastAPI()
    rm.install(app, recovery=False)
    try:
        async with serve(app, port):
            yield
    finally:
        rm.close()


async def test_audit_clean_then_orphan_and_mismatch(pg: PgServer, node_db: str) -> None:
    a, b = make_bank(pg, "bank-a"), make_bank(pg, "bank-b")
    try:
        async with running_node(node_db) as c:
            url = str(c.base_url)
            async with serving(a, url), serving(b, url):
                committed = await begin(c)
                await asyncio.to_thread(a.work, url, committed, "a", 10)
                await asyncio.to_thread(b.work, url, committed, "a", -10)
                r = await c.post(f"/v1/transactions/{committed}/commit")
                assert r.json()["state"] == "committed", r.text
                aborted = await begin(c)
                await asyncio.to_thread(a.work, url, aborted, "b", 5)
                assert (await c.post(f"/v1/transactions/{aborted}/abort")).status_code == 200
                assert a.prepared() == [] and b.prepared() == []

                run = (
                    "--url", url, "audit", "--grace", "0",
                    "--participant", f"bank-a={a.url}", "--participant", f"bank-b={b.url}",
                )  # fmt: skip
                code, report = await asyncio.to_thread(txc_json, *run)
                assert code == 0, report
                assert report["clean"] and report["problems"] == 0
                assert [p["checked"] for p in report["participants"]] == [2, 1]
                code, out, _ = await asyncio.to_thread(txc, *run)
                assert code == 0 and out.rstrip().endswith("clean")

                # Plant: prepared work the coordinator never heard of (an orphan), and a
                # participant whose record says it rolled back a committed transaction.
                a.plant_prepared("orphan-1", "c", 1, record=True)
                b.set_record(committed, "aborted")
                code, report = await asyncio.to_thread(txc_json, *run)
                assert code == 6, report
                found = {
                    (p["participant"], f["txid"]): f["kind"]
                    for p in report["participants"]
                    for f in p["findings"]
                }
                assert found == {
                    ("bank-a", "orphan-1"): "orphan",
                    ("bank-b", committed): "mismatch",
                }
                code, out, _ = await asyncio.to_thread(txc, *run)
                assert code == 6 and "2 problem(s) found" in out and "heuristic abort" in out
                # Read-only: nothing was resolved or asked.
                assert (await c.get("/v1/transactions/orphan-1")).status_code == 404
                assert len(a.prepared()) == 1

                # A young orphan is in flight, not a problem; the mismatch still is.
                code, report = await asyncio.to_thread(
                    txc_json, *[x if x != "0" else "3600" for x in run]
                )
                assert code == 6 and report["problems"] == 1
    finally:
        a.cleanup()
        b.cleanup()


async def test_audit_usage_errors(node_db: str) -> None:
    code, _, err = await asyncio.to_thread(txc, "audit", "--participant", "no-equals-sign")
    assert code == 2 and "NAME=DATABASE_URL" in err
    code, _, err = await asyncio.to_thread(
        txc, "--url", "http://127.0.0.1:9", "audit", "--participant", f"x={node_db}"
    )
    assert code == 2 and "txc_participant_record" in err


NOW = 10_000.0


def txn(
    outcome: str | None,
    phase2: str | None = "done",
    state: str | None = None,
    heuristic: str | None = None,
    vote: str = "yes",
) -> dict[str, object]:
    state = state or {"commit": "committed", "abort": "aborted", None: "active"}[outcome]
    parts = [] if phase2 is None else [
        {"name": "p", "vote": vote, "phase2": phase2, "heuristic": heuristic, "attempts": 3}
    ]  # fmt: skip
    return {
        "txid": "t",
        "state": state,
        "outcome": outcome,
        "decided_at": "1970-01-01T02:45:00Z",  # NOW - 900
        "participants": parts,
        "heuristic_acknowledged": False,
    }


PREPARED = Local(prepared=True, prepared_at=NOW - 900, record="prepared")
COMMITTED = Local(record="committed")
LAGGING = Local(record="prepared")  # nothing prepared: committed, the record lags
ABORTED = Local(record="aborted")
NOTHING = Local()


@pytest.mark.parametrize(
    ("local", "t", "kind"),
    [
        (PREPARED, None, "orphan"),
        (PREPARED, txn("commit", phase2=None), "orphan"),  # not enlisted
        (PREPARED, txn("abort"), "orphan"),
        (PREPARED, txn("abort", "pending", "aborting"), "phase2_pending"),
        (PREPARED, txn("commit", "pending", "committing"), "phase2_pending"),
        (PREPARED, txn("commit"), "in_doubt"),
        (PREPARED, txn(None, "waiting"), "in_doubt"),
        (COMMITTED, txn("commit"), None),
        (LAGGING, txn("commit"), None),
        (COMMITTED, txn("commit", "pending", "committing"), "phase2_pending"),
        (COMMITTED, txn("abort"), "mismatch"),
        (LAGGING, txn("abort", heuristic="commit"), "mismatch"),
        (COMMITTED, None, "mismatch"),
        (COMMITTED, txn(None, "waiting"), "mismatch"),
        (ABORTED, txn("abort"), None),
        (ABORTED, None, None),
        (ABORTED, txn("commit"), "mismatch"),
        (ABORTED, txn("commit", phase2=None), None),  # refused enlistment: not its outcome
        (NOTHING, txn("commit"), "missing"),
        (NOTHING, txn("commit", vote="read_only"), None),
        (NOTHING, txn("abort"), None),
        (NOTHING, txn("abort", "pending", "aborting"), "phase2_pending"),
        (NOTHING, txn(None, "waiting"), None),
        # Forgotten, answered by a node without its history: only the decision is known.
        (PREPARED, txn("commit", phase2=None) | {"source": "tombstone"}, "in_doubt"),
        (COMMITTED, txn("commit", phase2=None) | {"source": "tombstone"}, None),
        (ABORTED, txn("abort", phase2=None) | {"source": "tombstone"}, None),
    ],
)
def test_classify(local: Local, t: dict[str, object] | None, kind: str | None) -> None:
    f = classify("p", "t", local, t, NOW, grace_s=60)
    assert (f.kind if f else None) == kind, f
    if f is not None:
        assert f.problem


def test_grace_and_acknowledged_heuristics() -> None:
    young = Local(prepared=True, prepared_at=NOW - 5, record="prepared")
    f = classify("p", "t", young, None, NOW, grace_s=60)
    assert f is not None and f.kind == "orphan" and not f.problem
    acked = {**txn("abort"), "heuristic_acknowledged": True}
    f = classify("p", "t", COMMITTED, acked, NOW, grace_s=60)
    assert f is not None and f.kind == "mismatch" and not f.problem
