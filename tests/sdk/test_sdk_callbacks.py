"""Generic callbacks participant: the coordinator calls /prepare, then /commit or /abort;
the SDK's record makes every step idempotent (PostgreSQL and SQLite record stores)."""

from __future__ import annotations

import contextlib

import httpx
import pytest
from fastapi import FastAPI
from sdk_servers import ServerThread, free_port
from sqlalchemy import Engine, create_engine

from participant_sdk import (
    CallbackParticipant,
    CallbackWork,
    TransactionAborted,
    TxcClient,
    WorkRefused,
    create_tables,
    record,
)


class Store:
    """The 'resource': reservations pending per txid, durable after prepare."""

    def __init__(self) -> None:
        self.pending: dict[str, list[str]] = {}
        self.prepared: dict[str, list[str]] = {}
        self.committed: list[str] = []
        self.aborted: list[str] = []
        self.vote = "yes"

    def prepare(self, txid: str) -> str:
        if self.vote == "yes":
            self.prepared[txid] = self.pending.pop(txid, [])
        return self.vote

    def commit(self, txid: str) -> None:
        self.committed.extend(self.prepared.pop(txid, []))

    def abort(self, txid: str) -> None:
        self.pending.pop(txid, None)
        self.prepared.pop(txid, None)
        self.aborted.append(txid)


@pytest.fixture(params=["postgresql", "sqlite"])
def record_engine(request, db_url: str, make_engine, tmp_path) -> Engine:
    if request.param == "postgresql":
        eng = make_engine(db_url)
    else:
        eng = create_engine(f"sqlite:///{tmp_path / 'record.db'}")
    create_tables(eng)
    return eng


@contextlib.contextmanager
def _reserver(record_engine: Engine, coordinator: TxcClient | None):
    """The callback participant over `Store`, served with its `POST /reserve/{item}`."""
    store = Store()
    port = free_port()
    cp = CallbackParticipant(
        "reserver",
        prepare=store.prepare,
        commit=store.commit,
        abort=store.abort,
        record_engine=record_engine,
        public_url=f"http://127.0.0.1:{port}",
        coordinator=coordinator,
        development=True,  # the fake coordinator signs nothing
    )
    app = FastAPI()
    cp.install(app, recovery=False)

    @app.post("/reserve/{item}")
    def reserve(item: str, work: CallbackWork = cp.join()) -> dict:
        assert work.txid is not None
        store.pending.setdefault(work.txid, []).append(item)
        return {"txid": work.txid}

    server = ServerThread(app, port).start()
    try:
        yield cp, store, server.url
    finally:
        server.stop()
        cp.close()


@pytest.fixture
def service(record_engine: Engine, coord):
    with _reserver(record_engine, TxcClient(coord.url, retries=1)) as served:
        yield served


def test_commit_runs_prepare_then_commit(service, coord) -> None:
    cp, store, url = service
    with TxcClient(coord.url) as client, client.transaction() as tx:
        assert httpx.post(f"{url}/reserve/a", headers=tx.headers).status_code == 200
        assert httpx.post(f"{url}/reserve/b", headers=tx.headers).status_code == 200
    assert store.committed == ["a", "b"]
    assert [a for _, a, _ in coord.fake.phase2_replies] == ["prepare", "commit"]
    # Repeats are idempotent; a contradicting abort is a heuristic.
    assert cp.commit(tx.txid).status == 200 and store.committed == ["a", "b"]
    assert cp.abort(tx.txid).body["error"]["code"] == "heuristic_commit"


def test_vote_no_aborts(service, coord) -> None:
    _cp, store, url = service
    store.vote = "no"
    with TxcClient(coord.url) as client:
        tx = client.begin()
        assert httpx.post(f"{url}/reserve/a", headers=tx.headers).status_code == 200
        with pytest.raises(TransactionAborted):
            tx.commit()
    assert store.committed == [] and tx.txid in store.aborted
    r = httpx.post(f"{url}/reserve/b", headers=tx.headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "aborted"


def test_abort_before_work_and_unknown_commit(service, coord) -> None:
    cp, _store, url = service
    assert cp.commit("nobody").status == 404
    assert cp.abort("early").status == 200
    r = httpx.post(f"{url}/reserve/a", headers={"Txc-Transaction": "early"})
    assert r.status_code == 409
    assert cp.commit("early").body["error"]["code"] == "heuristic_abort"


def test_recovery_commits_prepared(service, coord) -> None:
    cp, store, url = service
    coord.fake.drive_phase2 = False
    with TxcClient(coord.url) as client:
        tx = client.begin()
        assert httpx.post(f"{url}/reserve/r", headers=tx.headers).status_code == 200
        assert cp.prepare(tx.txid).body == {"vote": "yes"}
        assert cp.resolve_in_doubt().actions() == {tx.txid: "left_pending"}
        client.commit(tx.txid)  # decided; phase 2 not driven by the fake
    assert cp.resolve_in_doubt(min_age_s=60).items == []  # too young for a periodic pass
    assert cp.resolve_in_doubt().actions() == {tx.txid: "committed"}
    assert store.committed == ["r"]
    assert cp.resolve_in_doubt().items == []


def _lost(*args, **kwargs):
    raise ConnectionError("the process died here")


def _prepare_interrupted(cp, client, url: str, item: str, monkeypatch):
    """A transaction whose prepare callback ran (the work is durable) and whose process then
    died before the record noted the yes."""
    tx = client.begin()
    assert httpx.post(f"{url}/reserve/{item}", headers=tx.headers).status_code == 200
    with monkeypatch.context() as m:
        m.setattr(record, "finish_preparing", _lost)
        with pytest.raises(ConnectionError):
            cp.prepare(tx.txid)
    return tx


def test_prepare_interrupted_after_the_callback_is_aborted_by_recovery(
    service, coord, monkeypatch
) -> None:
    """The callback made the work durable and the process died before the record said it
    voted yes: the record written before the callback makes recovery ask, and abort."""
    cp, store, url = service
    coord.fake.drive_phase2 = False
    with TxcClient(coord.url) as client:
        tx = _prepare_interrupted(cp, client, url, "x", monkeypatch)
        assert store.prepared == {tx.txid: ["x"]}
        assert cp.resolve_in_doubt().actions() == {tx.txid: "left_pending"}
        # Asked again (a new leader re-runs prepare): it did not finish, so NO.
        reply = cp.prepare(tx.txid)
        assert reply.status == 409 and "did not finish" in reply.body["reason"]
        assert store.prepared == {} and store.aborted == [tx.txid]
        with pytest.raises(TransactionAborted):
            client.commit(tx.txid)
    assert cp.resolve_in_doubt().items == []


def test_recovery_finishes_what_a_crash_left_before_the_vote(service, coord, monkeypatch):
    cp, store, url = service
    coord.fake.drive_phase2 = False
    with TxcClient(coord.url) as client:
        tx = _prepare_interrupted(cp, client, url, "y", monkeypatch)
        client.abort(tx.txid)  # the coordinator counted the silence as NO
    assert cp.resolve_in_doubt().actions() == {tx.txid: "rolled_back"}
    assert store.prepared == {} and store.aborted == [tx.txid]
    # An unfinished prepare is never committed, whatever asks.
    assert cp.commit("never-voted").status == 404


def test_a_failing_abort_callback_is_run_again(service, coord) -> None:
    """Voting NO runs the abort callback; when it fails, the record still says prepared,
    so recovery asks for the outcome and runs it again until it succeeds."""
    cp, store, url = service
    coord.fake.drive_phase2 = False
    store.vote = "no"
    failures = [RuntimeError("broker down")]
    real_abort = store.abort

    def flaky_abort(txid: str) -> None:
        if failures:
            raise failures.pop()
        real_abort(txid)

    cp._abort_cb = flaky_abort
    with TxcClient(coord.url) as client:
        tx = client.begin()
        assert httpx.post(f"{url}/reserve/z", headers=tx.headers).status_code == 200
        with pytest.raises(RuntimeError):
            cp.prepare(tx.txid)  # -> 503 to the coordinator: counted as NO
        assert store.aborted == []
        client.abort(tx.txid)
    assert cp.resolve_in_doubt().actions() == {tx.txid: "rolled_back"}
    assert store.aborted == [tx.txid]
    r = httpx.post(f"{url}/reserve/z2", headers=tx.headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "aborted"


def test_read_only_vote_keeps_no_record(service, coord, record_engine: Engine) -> None:
    cp, store, _url = service
    store.vote = "read_only"
    with TxcClient(coord.url) as client:
        tx = client.begin()
        assert cp.prepare(tx.txid).body == {"vote": "read_only"}
    with record.autocommit(record_engine) as conn:
        assert record.get(conn, "reserver", tx.txid) is None


def test_work_that_a_prepare_overtook_is_refused(service, coord) -> None:
    """A prepare that began while a request worked may not have seen its work: the request
    must not pass for part of the transaction (found by review)."""
    cp, store, _url = service
    coord.fake.drive_phase2 = False
    with TxcClient(coord.url) as client:
        tx = client.begin()
        with pytest.raises(WorkRefused) as exc:
            with cp.work(tx.txid) as w:
                store.pending.setdefault(w.txid, []).append("late")
                assert cp.prepare(tx.txid).body == {"vote": "yes"}  # overtakes the work
        assert exc.value.code == "already_prepared" and "while" in exc.value.message
        aborted = client.begin()
        assert cp.abort(aborted.txid).status == 200
        with pytest.raises(WorkRefused) as exc:
            with cp.work(aborted.txid):
                pass
        assert exc.value.code == "aborted"


def test_a_prepare_aborted_meanwhile_elsewhere_undoes_its_work(
    service, coord, record_engine: Engine
) -> None:
    """Another process aborted the txid while this one's callback prepared (the txid lock
    does not span processes on SQLite, nor survives a lost PostgreSQL session): the record
    says 'aborted', so the work just prepared is undone and the vote is NO (found by
    review: it was left prepared with nothing to resolve it)."""
    cp, store, url = service
    coord.fake.drive_phase2 = False
    with TxcClient(coord.url) as client:
        tx = client.begin()
        assert httpx.post(f"{url}/reserve/w", headers=tx.headers).status_code == 200
        real_prepare = cp._prepare_cb

        def prepare_while_aborted_elsewhere(txid: str) -> str:
            with record.autocommit(record_engine) as other:  # "another process"
                record.set_state(other, "reserver", txid, "aborted")
            return real_prepare(txid)

        cp._prepare_cb = prepare_while_aborted_elsewhere
        reply = cp.prepare(tx.txid)
    assert reply.status == 409 and reply.body["vote"] == "no"
    assert store.prepared == {} and store.aborted == [tx.txid]


def test_a_caller_named_coordinator_is_never_used(record_engine: Engine, coord) -> None:
    """No coordinator configured: a work request's Txc-Coordinator header does not make one
    (it would receive this participant's calls, and recovery would take its word for an
    outcome). The request is refused before any work, and the named host hears nothing."""
    with _reserver(record_engine, None) as (cp, store, url), TxcClient(coord.url) as client:
        tx = client.begin()
        headers = tx.headers | {"Txc-Coordinator": coord.url}
        resp = httpx.post(f"{url}/reserve/v", headers=headers)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == "no_coordinator"
        assert store.pending == {} and store.prepared == {}
        assert coord.fake.txs[tx.txid].participants == {}
        assert cp.resolve_in_doubt().actions() == {}
