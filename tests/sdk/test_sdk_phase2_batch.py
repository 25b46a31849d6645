"""`POST {prefix}/batch`: many phase-2 messages in one request, each answered as its own
`/commit` or `/abort` would be, over real HTTP with a real PostgreSQL server."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sdk_apps import serve_items
from sdk_helpers import items, prepared_gids, record_state
from sdk_real import API_TOKEN, eventually, serve_coordinator
from sqlalchemy import Engine, text

from participant_sdk import Transaction, TxcClient, create_tables, make_gid
from participant_sdk import pg_fastpath as fast
from participant_sdk.participant import MAX_BATCH_MESSAGES
from participant_sdk.signing import signed_headers

SECRET = "s3cret"


def batch(
    url: str,
    messages: list[tuple[str, str]] | list[dict[str, str]],
    name: str = "svc",
    secret: str | None = SECRET,
    raw: bytes | None = None,
) -> httpx.Response:
    body = raw
    if body is None:
        msgs = [m if isinstance(m, dict) else {"action": m[0], "txid": m[1]} for m in messages]
        body = json.dumps({"participant": name, "messages": msgs}).encode()
    headers = {"content-type": "application/json"}
    if secret is not None:
        headers |= signed_headers(secret, "POST", f"{url}/txc/batch", body)
    return httpx.post(f"{url}/txc/batch", content=body, headers=headers)


def results(r: httpx.Response) -> list[tuple[int, str]]:
    """(status, state or error code) per message."""
    assert r.status_code == 200, r.text
    out = []
    for res in r.json()["results"]:
        body = res["body"]
        out.append((res["status"], body.get("state") or body["error"]["code"]))
    return out


def prepare(svc_url: str, client: TxcClient, key: str) -> str:
    tx = client.begin()
    r = httpx.post(f"{svc_url}/items/{key}", headers=tx.headers)
    assert r.status_code == 200, r.text
    return tx.txid


def test_batch_commits_and_aborts_each_as_alone(
    engine: Engine, coord, monkeypatch: pytest.MonkeyPatch
) -> None:
    coord.fake.token = SECRET
    claims: list[list[str]] = []
    claim_commits = fast.claim_commits

    def spy(driver: fast.Driver, participant: str, txids: list[str]) -> set[str]:
        claims.append(list(txids))
        return claim_commits(driver, participant, txids)

    monkeypatch.setattr(fast, "claim_commits", spy)
    with (
        serve_items(engine, coord.url, token=SECRET) as svc,
        TxcClient(coord.url, token=SECRET) as client,
    ):
        t1, t2, t3, t4 = (prepare(svc.url, client, k) for k in "abcd")
        assert len(prepared_gids(engine)) == 4
        msgs = [
            ("commit", t1),
            ("abort", t3),
            ("commit", t2),
            ("commit", t1),  # the same message twice in one batch
            ("commit", "never-seen-here"),
            ("abort", "also-never-seen"),
        ]
        assert results(batch(svc.url, msgs)) == [
            (200, "committed"),
            (200, "aborted"),
            (200, "committed"),
            (200, "committed"),
            (404, "unknown_transaction"),
            (200, "aborted"),
        ]
        assert items(engine) == {"a": 1, "b": 1}
        # The commits were decided together, each txid once.
        assert claims == [[t1, t2, "never-seen-here"]]
        assert prepared_gids(engine) == [make_gid("svc", t4)]  # not in the batch: untouched
        assert record_state(engine, "svc", t3) == "aborted"
        # An abort of a txid not seen yet is recorded: its late work is refused.
        assert record_state(engine, "svc", "also-never-seen") == "aborted"

        # Repeated: the same answers (idempotent), nothing done twice.
        assert results(batch(svc.url, msgs))[:4] == [
            (200, "committed"),
            (200, "aborted"),
            (200, "committed"),
            (200, "committed"),
        ]
        # Messages that contradict what happened here report it, as alone.
        assert results(batch(svc.url, [("commit", t3), ("abort", t1), ("commit", t4)])) == [
            (409, "heuristic_abort"),
            (409, "heuristic_commit"),
            (200, "committed"),
        ]
        assert items(engine) == {"a": 1, "b": 1, "d": 1} and prepared_gids(engine) == []


def test_batch_whose_shared_decision_fails_commits_one_by_one(
    engine: Engine, coord, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batched record update failing (here: made to raise) falls back to the single
    path for every commit; nothing is lost or done twice."""
    coord.fake.token = SECRET
    with (
        serve_items(engine, coord.url, token=SECRET) as svc,
        TxcClient(coord.url, token=SECRET) as client,
    ):
        t1, t2 = prepare(svc.url, client, "a"), prepare(svc.url, client, "b")

        def broken(*args: object) -> set[str]:
            raise RuntimeError("injected failure of the batched claim")

        monkeypatch.setattr(fast, "claim_commits", broken)
        assert results(batch(svc.url, [("commit", t1), ("commit", t2)])) == [
            (200, "committed"),
            (200, "committed"),
        ]
        assert items(engine) == {"a": 1, "b": 1} and prepared_gids(engine) == []


def test_batch_failing_part_way_leaves_nothing_half_done(
    engine: Engine, coord, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection fails after the records are decided and one COMMIT PREPARED ran: the
    batch's commits are finished one by one (the careful path sees 'committed' records with
    prepared work and commits it), each answered 200."""
    coord.fake.token = SECRET
    with (
        serve_items(engine, coord.url, token=SECRET) as svc,
        TxcClient(coord.url, token=SECRET) as client,
    ):
        t1, t2, t3 = (prepare(svc.url, client, k) for k in "abc")
        finish = fast.finish_prepared
        calls = []

        def flaky(driver: fast.Driver, verb: str, gid: str) -> bool:
            calls.append(gid)
            if len(calls) == 2:
                raise RuntimeError("injected: connection lost after the first COMMIT PREPARED")
            return finish(driver, verb, gid)

        monkeypatch.setattr(fast, "finish_prepared", flaky)
        assert (
            results(batch(svc.url, [("commit", t) for t in (t1, t2, t3)]))
            == [(200, "committed")] * 3
        )
        assert items(engine) == {"a": 1, "b": 1, "c": 1} and prepared_gids(engine) == []
        assert {record_state(engine, "svc", t) for t in (t1, t2, t3)} == {"committed"}


def test_concurrent_batches_over_the_same_transactions(engine: Engine, coord) -> None:
    """Repeats racing each other (a retry while the first batch still runs): every answer
    is 200 committed, each transaction committed once."""
    coord.fake.token = SECRET
    with (
        serve_items(engine, coord.url, token=SECRET) as svc,
        TxcClient(coord.url, token=SECRET) as client,
    ):
        txids = [prepare(svc.url, client, f"k{i}") for i in range(12)]
        orders = [txids, list(reversed(txids)), txids[6:] + txids[:6], txids]
        with ThreadPoolExecutor(max_workers=len(orders)) as pool:
            answers = list(
                pool.map(lambda o: results(batch(svc.url, [("commit", t) for t in o])), orders)
            )
        assert all(a == [(200, "committed")] * len(txids) for a in answers)
        assert items(engine) == {f"k{i}": 1 for i in range(12)} and prepared_gids(engine) == []


def test_commit_and_abort_of_one_txid_in_a_batch_keep_their_order(engine: Engine, coord) -> None:
    """Never sent by the coordinator (one decision per transaction); a batch that has both
    is answered as the messages would be one after another."""
    coord.fake.token = SECRET
    with (
        serve_items(engine, coord.url, token=SECRET) as svc,
        TxcClient(coord.url, token=SECRET) as client,
    ):
        t1 = prepare(svc.url, client, "a")
        assert results(batch(svc.url, [("abort", t1), ("commit", t1)])) == [
            (200, "aborted"),
            (409, "heuristic_abort"),
        ]
        assert items(engine) == {} and prepared_gids(engine) == []


def test_batch_request_is_checked_before_anything_runs(engine: Engine, coord) -> None:
    coord.fake.token = SECRET
    with (
        serve_items(engine, coord.url, token=SECRET) as svc,
        TxcClient(coord.url, token=SECRET) as client,
    ):
        t1 = prepare(svc.url, client, "a")
        one = [("commit", t1)]
        assert batch(svc.url, one, secret=None).status_code == 401
        r = batch(svc.url, one, secret="not-the-secret")
        assert r.status_code == 403 and r.json()["error"]["code"] == "bad_signature"
        r = batch(svc.url, one, name="other")
        assert r.status_code == 400 and r.json()["error"]["code"] == "wrong_participant"
        for bad in (
            [],  # no message
            [{"action": "prepare", "txid": t1}],  # phase 2 only
            [{"action": "commit"}],
            [("commit", "x" * 10_000)],
            [("commit", t1)] * (MAX_BATCH_MESSAGES + 1),
        ):
            r = batch(svc.url, bad)
            assert r.status_code == 422, r.text
            assert r.json()["error"]["code"] == "invalid_request"
        for raw in (b"", b"not json", b"[]", b'{"participant": "svc"}'):
            r = batch(svc.url, [], raw=raw)
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
        r = batch(svc.url, [], raw=b"{" + b" " * 70_000 + b"}")
        assert r.status_code == 413
        # A malformed txid is that message's answer, not the batch's.
        assert results(batch(svc.url, [("commit", "bad txid!"), ("commit", t1)])) == [
            (400, "invalid_txid"),
            (200, "committed"),
        ]
        assert items(engine) == {"a": 1}


def test_batch_signature_is_bound_to_its_body(engine: Engine, coord) -> None:
    """A captured signed batch cannot be replayed with other messages."""
    coord.fake.token = SECRET
    with (
        serve_items(engine, coord.url, token=SECRET) as svc,
        TxcClient(coord.url, token=SECRET) as client,
    ):
        t1 = prepare(svc.url, client, "a")
        signed_for = json.dumps(
            {"participant": "svc", "messages": [{"action": "commit", "txid": "other"}]}
        ).encode()
        headers = {"content-type": "application/json"} | signed_headers(
            SECRET, "POST", f"{svc.url}/txc/batch", signed_for, now=time.time()
        )
        forged = json.dumps(
            {"participant": "svc", "messages": [{"action": "abort", "txid": t1}]}
        ).encode()
        r = httpx.post(f"{svc.url}/txc/batch", content=forged, headers=headers)
        assert r.status_code == 403
        assert prepared_gids(engine) == [make_gid("svc", t1)]


# -- through the real coordinator ----------------------------------------------------------


@pytest.fixture
def batching_coordinator(pg) -> Iterator[str]:
    """A real coordinator (a Raft group of one: its log has entries to share) with one
    request in flight per participant, so that concurrent transactions' phase 2 travels in
    batches. One secret for its API and for signing."""
    with serve_coordinator(
        pg, raft=True, participant_token=API_TOKEN, phase2_batch_inflight=1
    ) as url:
        yield url


def metric(coordinator_url: str, name: str) -> float:
    r = httpx.get(f"{coordinator_url}/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert r.status_code == 200, r.text
    for line in r.text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_concurrent_transactions_phase2_in_batches(
    engine: Engine, pg, make_engine, batching_coordinator: str
) -> None:
    """Many transactions committed at once, lazy and classic, over two participants: each
    commits at both exactly once, the coordinator carried their phase 2 in batches, and
    their acknowledgements shared log entries."""
    other = make_engine(pg.new_database("other"))
    create_tables(other)
    with other.begin() as conn:
        conn.execute(text("CREATE TABLE items (k text PRIMARY KEY, v int NOT NULL)"))
    n = 48
    with (
        serve_items(
            engine, batching_coordinator, "svc-a", API_TOKEN, deferred_enlistment=True
        ) as sa,
        serve_items(
            other, batching_coordinator, "svc-b", API_TOKEN, deferred_enlistment=True
        ) as sb,
        TxcClient(batching_coordinator, token=API_TOKEN) as client,
    ):

        def prepare_both(i: int) -> Transaction:
            tx = client.begin_lazy(timeout_s=30) if i % 2 == 0 else client.begin(timeout_s=30)
            for svc in (sa, sb):
                r = httpx.post(f"{svc.url}/items/k{i}?value={i}", headers=tx.headers)
                assert r.status_code == 200, r.text
                tx.collect(r)
            return tx

        with ThreadPoolExecutor(max_workers=16) as pool:
            txs = list(pool.map(prepare_both, range(n)))
            assert len(prepared_gids(engine)) == n and len(prepared_gids(other)) == n
            # All the commits at once: their phase 2 reaches each participant together.
            start = threading.Barrier(16)

            def commit(tx: Transaction) -> str:
                with contextlib.suppress(threading.BrokenBarrierError):
                    start.wait(timeout=5)
                return str(tx.commit()["outcome"])

            outcomes = list(pool.map(commit, txs))
    assert outcomes == ["commit"] * n
    expected = {f"k{i}": i for i in range(n)}
    eventually(lambda: items(engine) == expected and items(other) == expected)
    assert prepared_gids(engine) == [] and prepared_gids(other) == []
    # The dashboard's participant latency is per request (a batch is one), not per message:
    # the time a message waited for its batch is not a participant's. Read together, once
    # every acknowledgement is in (a reply is counted as the coordinator handles it).

    def figures() -> tuple[float, float, int, int]:
        batches = metric(batching_coordinator, "txc_phase2_batches")
        batched = metric(batching_coordinator, "txc_phase2_batched_messages")
        r = httpx.get(
            f"{batching_coordinator}/dashboard/api/metrics",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        )
        assert r.status_code == 200, r.text
        rows = [p for p in r.json()["participants"] if p["name"].startswith("svc-")]
        calls = sum(p["total_calls"] for p in rows)
        timed = sum(p["latency"]["n"] for p in rows)
        return batches, batched, calls, timed

    eventually(lambda: figures()[2] == 2 * n)
    batches, batched, calls, timed = figures()
    assert batches >= 1 and batched >= 2  # a batch carries 2 messages or more
    assert calls == 2 * n
    assert timed == calls - batched + batches
    # ... and their acknowledgements shared log entries.
    assert metric(batching_coordinator, "txc_phase2_results_coalesced") >= 1


def test_a_standalone_node_does_not_coalesce_results(coordinator_url: str) -> None:
    """Its log already writes each command as its own row, everything queued at once: no
    entries to share, so no coalescer (and no metric claiming one)."""
    r = httpx.get(f"{coordinator_url}/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert r.status_code == 200
    assert "txc_phase2_batches " in r.text
    assert "txc_phase2_results_coalesced" not in r.text
