"""Demo banks: atomic transfers between two participant services with their own PostgreSQL
databases, committed through the fake coordinator (which drives real 2PC over HTTP)."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import httpx
import pytest
from sdk_helpers import prepared_gids
from sdk_servers import ServerThread, free_port
from sqlalchemy import create_engine

from participant_sdk import TransactionAborted, TxcClient
from txc_demo.bank import SEED_ACCOUNTS, create_app
from txc_demo.transfer import TransferFailed, transfer
from txc_demo.transfer import main as transfer_main

TOTAL = 2 * sum(SEED_ACCOUNTS.values())
CONCURRENT_TRANSFERS = 12


class Banks:
    def __init__(self, a: str, b: str, urls: dict[str, str]) -> None:
        self.a, self.b, self.urls = a, b, urls

    def balances(self) -> dict[str, dict[str, int]]:
        out = {}
        for url in (self.a, self.b):
            body = httpx.get(f"{url}/accounts").json()
            out[body["bank"]] = {r["name"]: r["balance"] for r in body["accounts"]}
        return out

    def total(self) -> int:
        return sum(sum(v.values()) for v in self.balances().values())

    def no_prepared_left(self) -> bool:
        for url in self.urls.values():
            engine = create_engine(url)
            try:
                if prepared_gids(engine):
                    return False
            finally:
                engine.dispose()
        return True


@pytest.fixture
def banks(pg, coord) -> Iterator[Banks]:
    servers, urls = [], {}
    for name in ("bank-a", "bank-b"):
        port = free_port()
        db = pg.new_database("bank")
        urls[name] = db
        # The fake coordinator signs nothing: an unsigned development bank.
        app = create_app(name, db, coord.url, f"http://127.0.0.1:{port}", development=True)
        servers.append(ServerThread(app, port).start())
    yield Banks(servers[0].url, servers[1].url, urls)
    for s in servers:
        s.stop()


def test_transfer_commits_on_both_banks(banks: Banks, coord) -> None:
    assert banks.total() == TOTAL
    result = transfer(coord.url, banks.a, "alice", banks.b, "bob", 100)
    assert result["outcome"] == "commit"
    assert result["debit"]["balance"] == 900 and result["credit"]["balance"] == 1100
    bal = banks.balances()
    assert bal["bank-a"]["alice"] == 900 and bal["bank-b"]["bob"] == 1100
    assert banks.total() == TOTAL
    assert coord.fake.txs[result["txid"]].outcome == "commit"
    assert banks.no_prepared_left()


def test_insufficient_funds_changes_nothing(banks: Banks, coord) -> None:
    with pytest.raises(TransferFailed) as exc:
        transfer(coord.url, banks.a, "alice", banks.b, "bob", 5000)
    assert exc.value.status == 409 and exc.value.body["error"]["code"] == "insufficient_funds"
    assert banks.balances()["bank-a"]["alice"] == 1000
    assert [t.outcome for t in coord.fake.txs.values()] == ["abort"]


def test_failed_credit_rolls_back_the_prepared_debit(banks: Banks, coord) -> None:
    with pytest.raises(TransferFailed) as exc:
        transfer(coord.url, banks.a, "alice", banks.b, "nobody", 10)
    assert exc.value.status == 404
    assert banks.balances()["bank-a"]["alice"] == 1000  # the prepared debit was rolled back
    assert banks.no_prepared_left()


def test_participant_voting_no_aborts_transfer(banks: Banks, coord) -> None:
    """Bank B aborts the txid before its work (as if the coordinator had timed it out)."""
    with pytest.raises(TransferFailed) as exc:
        with TxcClient(coord.url) as client, client.transaction() as tx:
            httpx.post(f"{banks.b}/txc/abort", json={"txid": tx.txid, "participant": "bank-b"})
            ok = httpx.post(
                f"{banks.a}/transfer/debit",
                json={"account": "alice", "amount": 5},
                headers=tx.headers,
            )
            assert ok.status_code == 200
            r = httpx.post(
                f"{banks.b}/transfer/credit",
                json={"account": "bob", "amount": 5},
                headers=tx.headers,
            )
            raise TransferFailed(banks.b, r.status_code, r.json())
    assert exc.value.status == 409
    assert banks.total() == TOTAL and banks.balances()["bank-a"]["alice"] == 1000


def test_concurrent_transfers_keep_the_total(banks: Banks, coord) -> None:
    rng = random.Random(7)
    names = sorted(SEED_ACCOUNTS)
    jobs = []
    for _ in range(CONCURRENT_TRANSFERS):
        forward = rng.random() < 0.5
        src, dst = (banks.a, banks.b) if forward else (banks.b, banks.a)
        jobs.append((src, rng.choice(names), dst, rng.choice(names), rng.randint(1, 50)))
    outcomes: list[str] = []

    def run(job) -> None:
        try:
            outcomes.append(transfer(coord.url, *job)["outcome"])
        except (TransferFailed, TransactionAborted):
            outcomes.append("abort")

    threads = [threading.Thread(target=run, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == CONCURRENT_TRANSFERS and "commit" in outcomes
    assert banks.total() == TOTAL
    assert all(v >= 0 for bank in banks.balances().values() for v in bank.values())
    assert banks.no_prepared_left()


def test_bank_endpoints_and_cli(banks: Banks, coord, capsys) -> None:
    assert httpx.get(f"{banks.a}/healthz").json()["bank"] == "bank-a"
    assert httpx.get(f"{banks.a}/accounts/carol").json()["balance"] == 1000
    r = httpx.get(f"{banks.a}/accounts/nobody")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_account"
    r = httpx.post(f"{banks.a}/transfer/debit", json={"account": "alice", "amount": 1})
    assert r.status_code == 400  # no transaction header
    r = httpx.post(
        f"{banks.a}/transfer/debit",
        json={"account": "alice", "amount": -1},
        headers={"Txc-Transaction": "t"},
    )
    assert r.status_code == 422
    args = [
        "--coordinator-url",
        coord.url,
        "--from-bank",
        banks.b,
        "--from-account",
        "carol",
        "--to-bank",
        banks.a,
        "--to-account",
        "carol",
        "--amount",
        "25",
    ]
    assert transfer_main(args) == 0
    assert '"commit"' in capsys.readouterr().out
    bal = banks.balances()
    assert bal["bank-a"]["carol"] == 1025 and bal["bank-b"]["carol"] == 975
