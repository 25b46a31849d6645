"""Per-participant identities over real HTTP and real PostgreSQL (issue 16): a coordinator
with a participant registry, two demo banks with their own secrets, and the attacks a
hostile network or a dishonest participant can try. Each attack is answered with a clear
status, and nothing is enlisted, prepared, committed or recorded because of it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sdk_real import serve_coordinator
from sdk_servers import ServerThread, free_port, serve
from sqlalchemy import Engine, text

from participant_sdk import (
    InsecureConfiguration,
    PgResourceManager,
    TransactionAborted,
    TxcClient,
)
from participant_sdk.signing import (
    ANSWER_SIGNATURE_HEADER,
    SIGNATURE_HEADER,
    answer_signature,
    answer_valid,
    enlistment_signature,
    participant_headers,
    signed_headers,
)
from tests.helpers import trickle
from txc_demo.bank import create_app
from txc_demo.transfer import TransferFailed, transfer

SECRET_A = "bank-a-secret-0123456789"
SECRET_B = "bank-b-secret-0123456789"
SECRET_M = "mallory-secret-0123456789"
OLD_A, NEW_A = "bank-a-old-secret-0123", "bank-a-new-secret-0123"
CLIENT_TOKEN = "client-token-0123456789"
BEARER_PARTICIPANT = "participant-bearer-0123456789"


def write_registry(path: Path, entries: dict[str, tuple[list[str], list[str]]]) -> str:
    text_ = "".join(
        f"[participants.{name}]\nsecrets = {json.dumps(secrets)}\nurls = {json.dumps(urls)}\n\n"
        for name, (secrets, urls) in entries.items()
    )
    path.write_text(text_)
    path.chmod(0o600)
    return str(path)


@dataclass
class Group:
    coordinator: str
    bank_a: str
    bank_b: str
    mallory: str  # a registered participant's URL, served by the test


class Mallory:
    """A registered participant that answers every prepare with a "yes" it does not sign
    (or signs with a secret that is not its own): what a forger on the path would send."""

    def __init__(self, sign_with: str | None = None) -> None:
        self.sign_with = sign_with
        self.calls: list[str] = []
        self.app = FastAPI()

        @self.app.post("/txc/{action}")
        async def protocol(action: str, request: Request) -> JSONResponse:
            self.calls.append(action)
            resp = JSONResponse({"vote": "yes"} if action == "prepare" else {})
            sig = request.headers.get(SIGNATURE_HEADER)
            if self.sign_with and sig:
                resp.headers[ANSWER_SIGNATURE_HEADER] = answer_signature(
                    self.sign_with, sig, 200, bytes(resp.body)
                )
            return resp


@contextlib.contextmanager
def registry_group(
    pg: Any, tmp_path: Path, bank_a_secret: str | list[str] = SECRET_A, a_secrets=None
) -> Iterator[tuple[Group, Mallory]]:
    pa, pb, pm = free_port(), free_port(), free_port()
    urls = {n: f"http://127.0.0.1:{p}" for n, p in (("a", pa), ("b", pb), ("m", pm))}
    registry = write_registry(
        tmp_path / "participants.toml",
        {
            "bank-a": (a_secrets or [SECRET_A], [urls["a"] + "/txc"]),
            "bank-b": ([SECRET_B], [urls["b"] + "/txc"]),
            "mallory": ([SECRET_M], [urls["m"] + "/txc"]),
        },
    )
    mallory = Mallory()
    with serve_coordinator(
        pg,
        participant_token="",
        participants_file=registry,
        api_tokens=f"client={CLIENT_TOKEN},participant={BEARER_PARTICIPANT}",
    ) as coordinator:
        servers = []
        for name, port, secret in (
            ("bank-a", pa, bank_a_secret),
            ("bank-b", pb, SECRET_B),
        ):
            app = create_app(
                name,
                pg.new_database("bank"),
                coordinator,
                f"http://127.0.0.1:{port}",
                participant_token=secret,  # type: ignore[arg-type]
            )
            servers.append(ServerThread(app, port).start())
        servers.append(ServerThread(mallory.app, pm).start())
        try:
            yield Group(coordinator, urls["a"], urls["b"], urls["m"]), mallory
        finally:
            for s in servers:
                s.stop()


@pytest.fixture
def group(pg: Any, tmp_path: Path) -> Iterator[tuple[Group, Mallory]]:
    with registry_group(pg, tmp_path) as g:
        yield g


def balances(bank: str) -> dict[str, int]:
    accounts = httpx.get(f"{bank}/accounts").json()["accounts"]
    return {a["name"]: a["balance"] for a in accounts}


def client(g: Group) -> TxcClient:
    return TxcClient(g.coordinator, token=CLIENT_TOKEN)


def signed_enlist(
    g: Group, txid: str, as_name: str, secret: str, name: str, url: str, **headers: str
) -> httpx.Response:
    target = f"{g.coordinator}/v1/transactions/{txid}/participants"
    body = json.dumps({"name": name, "url": url}).encode()
    h = participant_headers(as_name, secret, "POST", target, body) | headers
    return httpx.post(target, content=body, headers=h | {"Content-Type": "application/json"})


def participants_of(g: Group, txid: str) -> list[str]:
    rec = httpx.get(
        f"{g.coordinator}/v1/transactions/{txid}",
        headers={"Authorization": f"Bearer {CLIENT_TOKEN}"},
    ).json()
    return [p["name"] for p in rec["participants"]]


# -- the honest path ------------------------------------------------------------------------


@pytest.mark.parametrize("lazy", [False, True], ids=["classic", "lazy"])
def test_a_transfer_commits_with_each_participant_signing_for_itself(
    group: tuple[Group, Mallory], lazy: bool
) -> None:
    g, _ = group
    before_a, before_b = balances(g.bank_a), balances(g.bank_b)
    with client(g) as c:
        out = transfer(g.coordinator, g.bank_a, "alice", g.bank_b, "bob", 7, client=c, lazy=lazy)
    assert out["outcome"] == "commit"
    assert balances(g.bank_a)["alice"] == before_a["alice"] - 7
    assert balances(g.bank_b)["bob"] == before_b["bob"] + 7
    assert sorted(participants_of(g, out["txid"])) == ["bank-a", "bank-b"]


# -- participants' calls to the coordinator -------------------------------------------------


def test_a_participant_enlists_only_its_own_name_at_its_own_urls(
    group: tuple[Group, Mallory],
) -> None:
    g, _ = group
    with client(g) as c:
        tx = c.begin()
        # bank-a's secret naming bank-b: another participant's name.
        r = signed_enlist(g, tx.txid, "bank-a", SECRET_A, "bank-b", g.bank_b + "/txc")
        assert (r.status_code, r.json()["error"]["code"]) == (403, "wrong_participant")
        # its own name, somewhere else (SSRF: the coordinator would send it signed requests).
        for url in (
            "http://127.0.0.1:1/txc",
            g.bank_a + "/txc/../../admin",
            g.bank_a + "/txc?x=1",
            g.bank_a.replace("http://", "http://user@") + "/txc",
            g.bank_a + "0/txc",  # a prefix of the port is not the registered URL
        ):
            r = signed_enlist(g, tx.txid, "bank-a", SECRET_A, "bank-a", url)
            assert r.status_code in (403, 422), (url, r.text)
            if r.status_code == 403:
                assert r.json()["error"]["code"] == "url_not_registered", url
        assert participants_of(g, tx.txid) == []
        # Its own name at its own URL: taken.
        r = signed_enlist(g, tx.txid, "bank-a", SECRET_A, "bank-a", g.bank_a + "/txc")
        assert r.status_code == 201, r.text
        assert participants_of(g, tx.txid) == ["bank-a"]
        c.abort(tx.txid)


def test_forged_unknown_stale_and_bearer_enlistments_are_refused(
    group: tuple[Group, Mallory],
) -> None:
    g, _ = group
    url_a = g.bank_a + "/txc"
    with client(g) as c:
        tx = c.begin()
        # Another participant's secret claiming bank-a's name.
        r = signed_enlist(g, tx.txid, "bank-a", SECRET_B, "bank-a", url_a)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthenticated")
        # A name nobody registered.
        r = signed_enlist(g, tx.txid, "bank-c", SECRET_A, "bank-c", url_a)
        assert r.status_code == 401
        # A signature from 10 minutes ago.
        target = f"{g.coordinator}/v1/transactions/{tx.txid}/participants"
        body = json.dumps({"name": "bank-a", "url": url_a}).encode()
        old = participant_headers("bank-a", SECRET_A, "POST", target, body, now=time.time() - 600)
        r = httpx.post(target, content=body, headers=old | {"Content-Type": "application/json"})
        assert r.status_code == 401
        # The body changed under a good signature (another URL).
        good = participant_headers("bank-a", SECRET_A, "POST", target, body)
        other = json.dumps({"name": "bank-a", "url": "http://127.0.0.1:1/txc"}).encode()
        r = httpx.post(target, content=other, headers=good | {"Content-Type": "application/json"})
        assert r.status_code == 401
        # A shared participant bearer token: with a registry, not enough to enlist.
        r = httpx.post(
            target,
            json={"name": "bank-a", "url": url_a},
            headers={"Authorization": f"Bearer {BEARER_PARTICIPANT}"},
        )
        assert (r.status_code, r.json()["error"]["code"]) == (
            403,
            "participant_identity_required",
        )
        # No credentials at all.
        r = httpx.post(target, json={"name": "bank-a", "url": url_a})
        assert r.status_code == 401
        assert participants_of(g, tx.txid) == []
        c.abort(tx.txid)


def test_every_answer_to_a_participant_is_signed_for_that_participant(
    group: tuple[Group, Mallory],
) -> None:
    g, _ = group
    with client(g) as c:
        tx = c.begin()
        c.abort(tx.txid)
    target = f"{g.coordinator}/v1/transactions/{tx.txid}/outcome"
    for path_target, expect in ((target, 200), (target.replace(tx.txid, "nope/x"), 404)):
        h = participant_headers("bank-a", SECRET_A, "GET", path_target, b"")
        r = httpx.get(path_target, headers=h)
        assert r.status_code == expect
        given = r.headers.get(ANSWER_SIGNATURE_HEADER)
        assert answer_valid(SECRET_A, h[SIGNATURE_HEADER], r.status_code, r.content, given)
        # Bound to the participant and to the request: nobody else's, no other call's.
        assert not answer_valid(SECRET_B, h[SIGNATURE_HEADER], r.status_code, r.content, given)
        assert not answer_valid(SECRET_A, "p1=" + "0" * 64, r.status_code, r.content, given)
    assert r.status_code == 404


def test_a_deferred_enlistment_must_be_the_named_participants(
    group: tuple[Group, Mallory],
) -> None:
    g, _ = group
    url_a, url_b = g.bank_a + "/txc", g.bank_b + "/txc"
    with client(g) as c:
        for entry, code in (
            # bank-a's signature over an enlistment of bank-b (a forged "yes" for another).
            (
                lambda t: {
                    "name": "bank-b",
                    "url": url_b,
                    "vote": "yes",
                    "sig": enlistment_signature(SECRET_A, t, "bank-b", url_b, "yes"),
                },
                "bad_enlistment_signature",
            ),
            # bank-a's own signature, but at a URL that is not bank-a's.
            (
                lambda t: {
                    "name": "bank-a",
                    "url": "http://127.0.0.1:1/txc",
                    "vote": "yes",
                    "sig": enlistment_signature(
                        SECRET_A, t, "bank-a", "http://127.0.0.1:1/txc", "yes"
                    ),
                },
                "url_not_registered",
            ),
            # No signature at all.
            (lambda t: {"name": "bank-a", "url": url_a, "vote": "yes"}, "bad_enlistment_signature"),
        ):
            tx = c.begin_lazy()
            target = f"{g.coordinator}/v1/transactions/{tx.txid}/commit"
            r = httpx.post(
                target,
                json={"participants": [entry(tx.txid)], "begin": {}},
                headers={"Authorization": f"Bearer {CLIENT_TOKEN}"},
            )
            assert (r.status_code, r.json()["error"]["code"]) == (403, code), r.text
            # Nothing was recorded: the transaction is unknown (an /outcome is abort).
            r = httpx.get(
                f"{g.coordinator}/v1/transactions/{tx.txid}",
                headers={"Authorization": f"Bearer {CLIENT_TOKEN}"},
            )
            assert r.status_code == 404


# -- the coordinator's calls to participants --------------------------------------------------


def test_a_participant_takes_only_requests_signed_with_its_own_secret(
    group: tuple[Group, Mallory],
) -> None:
    g, _ = group
    url = g.bank_a + "/txc/commit"
    body = json.dumps({"txid": "t-unknown-1", "participant": "bank-a"}).encode()
    json_h = {"Content-Type": "application/json"}
    r = httpx.post(url, content=body, headers=json_h)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "unsigned")
    r = httpx.post(url, content=body, headers=json_h | signed_headers(SECRET_B, "POST", url, body))
    assert (r.status_code, r.json()["error"]["code"]) == (403, "bad_signature")
    stale = signed_headers(SECRET_A, "POST", url, body, now=time.time() - 600)
    r = httpx.post(url, content=body, headers=json_h | stale)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "stale_signature")
    h = signed_headers(SECRET_A, "POST", url, body)
    r = httpx.post(url, content=body, headers=json_h | h)
    assert r.status_code == 404  # accepted, and it has no trace of that txid
    assert answer_valid(
        SECRET_A, h[SIGNATURE_HEADER], 404, r.content, r.headers.get(ANSWER_SIGNATURE_HEADER)
    )


@pytest.mark.parametrize("sign_with", [None, SECRET_A], ids=["unsigned", "another-secret"])
def test_a_yes_vote_not_signed_by_the_participant_counts_as_no(
    pg: Any, tmp_path: Path, sign_with: str | None
) -> None:
    with registry_group(pg, tmp_path) as (g, mallory):
        mallory.sign_with = sign_with
        with client(g) as c:
            tx = c.begin()
            r = signed_enlist(g, tx.txid, "mallory", SECRET_M, "mallory", g.mallory + "/txc")
            assert r.status_code == 201, r.text
            with pytest.raises(TransactionAborted):
                c.commit(tx.txid)
            assert c.get(tx.txid)["outcome"] == "abort"
        assert "prepare" in mallory.calls


# -- a participant's trust in coordinators ------------------------------------------------------


class Recording:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.app = FastAPI()

        @self.app.api_route("/{path:path}", methods=["GET", "POST"])
        async def anything(path: str, request: Request) -> JSONResponse:
            self.seen.append(f"{request.method} /{path}")
            parts = path.split("/")
            txid = parts[2] if len(parts) > 2 else "x"
            return JSONResponse({"txid": txid, "outcome": "commit"})


def test_a_caller_named_coordinator_hears_nothing(group: tuple[Group, Mallory]) -> None:
    g, _ = group
    evil = Recording()
    with serve(evil.app) as server, client(g) as c:
        tx = c.begin()
        headers = tx.headers | {"Txc-Coordinator": server.url}
        r = httpx.post(
            f"{g.bank_a}/transfer/debit", json={"account": "alice", "amount": 1}, headers=headers
        )
        assert r.status_code == 200, r.text
        assert participants_of(g, tx.txid) == ["bank-a"]
        c.abort(tx.txid)
    assert evil.seen == []


def test_an_outcome_nobody_signed_is_not_applied(pg: Any, engine: Engine, tmp_path: Path) -> None:
    """A participant whose coordinator link is hijacked: the forger answers every outcome
    with "commit", unsigned. Recovery takes no action on it; the real coordinator's signed
    "abort" (an unknown txid) then rolls the work back."""
    evil = Recording()
    with serve(evil.app) as server:
        rm = PgResourceManager(
            "svc",
            engine,
            public_url=f"http://127.0.0.1:{free_port()}",
            coordinator_url=server.url,
            participant_token=SECRET_A,
            deferred_enlistment=True,
        )
        try:
            with rm.work("t-hijack-1", deferred=True) as w:
                w.connection.execute(text("INSERT INTO items VALUES ('k', 1)"))
            report = rm.resolve_in_doubt()
            (item,) = [i for i in report.items if i.txid == "t-hijack-1"]
            assert item.action == "error" and "not signed" in (item.error or ""), item
            assert item.outcome is None
            assert evil.seen, "recovery asked the (hijacked) coordinator"
            with engine.connect() as conn:
                gids = conn.execute(text("SELECT gid FROM pg_prepared_xacts")).scalars().all()
            assert any(g.endswith(":t-hijack-1") for g in gids)
        finally:
            rm.close()


def test_recovery_takes_the_real_coordinators_signed_outcome(
    pg: Any, engine: Engine, tmp_path: Path
) -> None:
    registry = write_registry(
        tmp_path / "participants.toml", {"svc": ([SECRET_A], ["http://127.0.0.1:9/txc"])}
    )
    with serve_coordinator(
        pg, participant_token="", participants_file=registry, api_tokens=f"client={CLIENT_TOKEN}"
    ) as coordinator:
        rm = PgResourceManager(
            "svc",
            engine,
            public_url="http://127.0.0.1:9",
            coordinator_url=coordinator,
            participant_token=SECRET_A,
            deferred_enlistment=True,
        )
        try:
            with rm.work("t-signed-1", deferred=True) as w:
                w.connection.execute(text("INSERT INTO items VALUES ('k', 1)"))
            assert rm.resolve_in_doubt().actions() == {"t-signed-1": "rolled_back"}
        finally:
            rm.close()


# -- secrets: rotation, refusal to start unsigned -----------------------------------------------


def test_rotation_two_secrets_valid_at_once(pg: Any, tmp_path: Path) -> None:
    """The coordinator holds [new, old] for bank-a (signs with new, takes both). bank-a first
    still signs with the old one (holding [old, new]), then moves to [new] alone: transfers
    commit at every step."""
    for bank_a in ([OLD_A, NEW_A], [NEW_A]):
        with registry_group(pg, tmp_path, bank_a_secret=bank_a, a_secrets=[NEW_A, OLD_A]) as (
            g,
            _,
        ):
            with client(g) as c:
                out = transfer(g.coordinator, g.bank_a, "alice", g.bank_b, "bob", 1, client=c)
            assert out["outcome"] == "commit", bank_a


def test_a_secret_the_coordinator_does_not_hold_gets_nothing_done(pg: Any, tmp_path: Path) -> None:
    with registry_group(pg, tmp_path, bank_a_secret="not-the-registered-one-012") as (g, _):
        before = balances(g.bank_a)
        with client(g) as c, pytest.raises(TransferFailed):
            transfer(g.coordinator, g.bank_a, "alice", g.bank_b, "bob", 1, client=c)
        assert balances(g.bank_a) == before


def test_a_participant_without_a_secret_refuses_to_serve(engine: Engine) -> None:
    rm = PgResourceManager(
        "svc", engine, public_url="http://127.0.0.1:9", coordinator_url="http://127.0.0.1:1"
    )
    with pytest.raises(InsecureConfiguration, match="development=True"):
        rm.install(FastAPI())
    dev = PgResourceManager(
        "svc",
        engine,
        public_url="http://127.0.0.1:9",
        coordinator_url="http://127.0.0.1:1",
        development=True,
    )
    dev.install(FastAPI(), recovery=False)


def test_the_demo_bank_without_a_secret_exits_with_one_line(db_url: str) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("TXC_API_TOKEN", "TXC_PARTICIPANT_TOKEN")
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "txc_demo.bank",
            "--name",
            "bank-x",
            "--database-url",
            db_url,
            "--coordinator-url",
            "http://127.0.0.1:1",
            "--port",
            str(free_port()),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "refusing to serve" in lines[0], proc.stderr


# -- a participant's endpoints against oversized and slow requests ------------------------------


def test_oversized_and_slow_protocol_requests_are_cut_off(
    group: tuple[Group, Mallory], monkeypatch: pytest.MonkeyPatch
) -> None:
    from participant_sdk import participant

    monkeypatch.setattr(participant, "PROTOCOL_READ_TIMEOUT_S", 1.0)
    g, _ = group
    port = int(g.bank_a.rsplit(":", 1)[1])
    huge = (
        b"POST /txc/prepare HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n{"
    )
    started = time.monotonic()
    assert " 413 " in trickle(port, huge, 0.2, 5.0)
    slow = (
        b"POST /txc/prepare HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    assert " 408 " in trickle(port, slow, 0.2, 8.0)
    assert time.monotonic() - started < 8.0
    # And the bank still answers.
    assert httpx.get(f"{g.bank_a}/healthz").status_code == 200
