"""The store's in-memory view of finished transactions (coordinator/store.py `recent`):
only what was published after a database commit, the newest MAX_RECENT_FINISHED of them,
always the latest version, and dropped whenever the applied state is replaced."""

from __future__ import annotations

import time

import pytest

from coordinator import migrate
from coordinator.db import make_engine
from coordinator.model import Outcome, Transaction, TxState
from coordinator.store import Store


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
