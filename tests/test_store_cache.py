"""The store's in-memory view of finished transactions (coordinator/store.py `recent`):
only what was published after a database commit, the newest MAX_RECENT_FINISHED of them,
always the latest version, and dropped whenever the applied state is replaced."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from coordinator import migrate
from coordinator.commands import Ack, Begin, Decide, Enlist, StartPrepare
from coordinator.db import make_engine
from coordinator.engine import Carried, txid_for_key
from coordinator.model import Outcome, Transaction, TxState, Vote
from coordinator.pgconn import HotConnection
from coordinator.statemachine import Status
from coordinator.store import LogEntry, Store


def _txn(txid: str, state: TxState) -> Transaction:
    now = time.time()
    outcome = {TxState.COMMITTED: Outcome.COMMIT, TxState.ABORTED: Outcome.ABORT}.get(state)
    return Transaction(
        txid=txid, state=state, created_at=now, expires_at=now + 60, updated_at=now,
        outcome=outcome,
    )  # fmt: skip


async def test_recent_holds_the_newest_finished_and_falls_back_to_the_database(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate.upgrade(db_url, "coordinator")
    engine = make_engine(db_url)
    store = Store(engine)
    monkeypatch.setattr("coordinator.store.MAX_RECENT_FINISHED", 3)
    try:
        store.publish({"a": _txn("a", TxState.ACTIVE)})
        assert "a" in store.inflight and "a" not in store.recent
        for txid in ("a", "b", "c", "d"):
            store.publish({txid: _txn(txid, TxState.COMMITTED)})
        assert list(store.recent) == ["b", "c", "d"] and "a" not in store.inflight
        # A newer version of a finished transaction (e.g. a heuristic acknowledged) replaces
        # the cached one and becomes the newest.
        newer = _txn("b", TxState.COMMITTED)
        newer.heuristic_acknowledged = True
        store.publish({"b": newer})
        assert list(store.recent) == ["c", "d", "b"]
        got = await store.get("b")
        assert got is not None and got.heuristic_acknowledged
        # Evicted ones come from the database (here: never written, so unknown).
        assert await store.get("a") is None
        # Replacing the applied state forgets everything cached.
        store.reset_inflight({})
        assert not store.recent
        store.publish({"e": _txn("e", TxState.ABORTED)})
        await store.load_inflight()
        assert not store.recent
    finally:
        await engine.dispose()


async def test_a_begin_without_a_key_is_applied_without_a_lookup(db_url: str) -> None:
    """A keyless Begin's txid is random (no record can exist): applying it reads nothing.
    A keyed Begin (its txid derives from the key) and any other command on a transaction
    not in memory still look for the record."""
    migrate.upgrade(db_url, "coordinator")
    engine = make_engine(db_url)
    store = Store(engine)
    db = HotConnection(db_url)
    lookups: list[object] = []
    real = db.fetchall

    async def counting(query: str, params: Any) -> list[tuple[Any, ...]]:
        lookups.append(params)
        return await real(query, params)

    db.fetchall = counting  # type: ignore[method-assign]
    now = time.time()
    try:
        fresh = str(uuid.uuid4())
        results, _, _ = await store.apply_batch(db, [LogEntry(1, 1, Begin(txid=fresh, at=now))])
        assert results[0].status is Status.CREATED and lookups == []
        keyed = txid_for_key("order-7")
        entry = LogEntry(2, 1, Begin(txid=keyed, at=now, idempotency_key="order-7"))
        results, _, _ = await store.apply_batch(db, [entry])
        assert results[0].status is Status.CREATED and len(lookups) == 1
        results, _, _ = await store.apply_batch(db, [LogEntry(3, 1, Ack(txid="t-cold", at=now))])
        assert results[0].status is Status.NOT_FOUND and len(lookups) == 2
    finally:
        await db.close()
        await engine.dispose()


async def test_a_lazy_begin_finds_a_record_only_the_database_holds(db_url: str) -> None:
    """A lazy begin is a keyless Begin (no look-up of its own) whose txid the client chose:
    it comes in one entry with the decision for the same txid, so the batch loads that
    record anyway. Here a presumed abort that only the database holds: the Begin reports it,
    the enlistment is refused and the COMMIT is not taken (rule 3)."""
    migrate.upgrade(db_url, "coordinator")
    engine = make_engine(db_url)
    store = Store(engine)
    db = HotConnection(db_url)
    txid = str(uuid.uuid4())
    aborted = _txn(txid, TxState.ABORTED)

    async def database(query: str, params: Any) -> list[tuple[Any, ...]]:
        return [("r", aborted.to_dict())] if txid in params["txids"] else []

    db.fetchall = database  # type: ignore[method-assign]
    now = time.time()
    enlist = Enlist(txid=txid, at=now, name="a", url="http://a", vote=Vote.YES)
    carried = Carried(Begin(txid=txid, at=now), [enlist])
    decide = Decide(txid=txid, at=now, outcome=Outcome.COMMIT, only_if_unanimous=True)
    proposal = carried.then(decide, StartPrepare(txid=txid, at=now))
    try:
        entries = [LogEntry(1, seq, cmd) for seq, cmd in enumerate(proposal)]
        results, changed, _ = await store.apply_batch(db, entries)
        assert results[0].status is Status.OK and results[0].message == "transaction exists"
        assert results[1].status is Status.CONFLICT  # not active: no enlistment
        final = results[-1].txn
        assert final is not None and final.outcome is Outcome.ABORT and not final.participants
        assert changed == {}
    finally:
        await db.close()
        await engine.dispose()
