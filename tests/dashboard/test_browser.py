"""The dashboard in a real browser (headless Chromium driven by Playwright) against a live
system: three `txc serve` processes on real PostgreSQL, participants served over HTTP, one
of them down. The page is opened on a follower, as an operator might. Each test checks what
the page shows against the API, and the actions' effects through the API; screenshots go to
docs/screenshots/ (with TXC_UPDATE_SCREENSHOTS=1). The nodes forget finished transactions
RETENTION_S after they finish, so that the last test finds them in the History view.

Needs the `playwright` package (the dev extra) and a Chromium (Debian's `chromium`; `.ci/run`
installs it). Without them these tests skip, except under CI (`CI` set), where they fail.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import create_engine, text

from tests.conftest import PgServer
from tests.helpers import ScriptedParticipant, free_port, serve
from tests.processes import Cluster, start_cluster

# Screenshots go to a temporary folder unless TXC_UPDATE_SCREENSHOTS=1 asks to refresh the
# ones kept in the repository (docs/screenshots/), so a test run leaves the tree unchanged.
SCREENSHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "screenshots"
    if os.environ.get("TXC_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "txc-screenshots"
)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Playwright adds --headless and its own fresh --user-data-dir; these are the rest of what
# Chromium needs as root in a container.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1440, "height": 900}
UI_TIMEOUT_MS = 15_000  # the longest the page may take to show something (a poll or two)
EFFECT_TIMEOUT_S = 15.0  # the longest an action may take to show in the API
TOKENS = {
    "admin": "admin-token-0123456789",
    "read": "read-token-0123456789",
    "client": "client-token-0123456789",
}
API_TOKENS = ",".join(f"{role}={token}" for role, token in TOKENS.items())
RETENTION_S = 30
FORGET_TIMEOUT_S = RETENTION_S + 45.0  # the last transaction finishes in the retry test
NODE_ENV = {
    "TXC_API_TOKENS": API_TOKENS,
    # After a failed phase-2 message the next try is a minute away: longer than this module
    # runs, so the operator's "retry now" is what finishes the stuck transaction.
    "TXC_PHASE2_BACKOFF_INITIAL_S": "60",
    "TXC_PHASE2_BACKOFF_MAX_S": "120",
    # Long enough for the first tests to see the finished transactions live, short enough
    # for the last one to find every one of them forgotten, in the History view.
    "TXC_RETENTION_S": str(RETENTION_S),
}
COMMITS = 12
ABORTS = 4


def chromium_or_skip() -> tuple[Any, str]:
    """Playwright's async API and a Chromium executable, or skip (fail under CI)."""
    reason = None
    api: Any = None
    try:
        from playwright import async_api as api
    except ImportError:
        reason = "the playwright package is not installed (pip install -e '.[dev]')"
    exe = os.environ.get("TXC_CHROMIUM") or next(
        (p for p in map(shutil.which, CHROMIUM_NAMES) if p), None
    )
    if reason is None and exe is None:
        reason = "no Chromium found (apt-get install chromium, or set TXC_CHROMIUM)"
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests must run under CI: {reason}")
        pytest.skip(reason)
    assert exe is not None
    api.expect.set_options(timeout=UI_TIMEOUT_MS)
    return api, exe


@dataclass
class Live:
    cluster: Cluster
    leader_url: str
    page_url: str  # a follower's
    api: httpx.AsyncClient  # admin, against the leader
    browser: Any
    ok: ScriptedParticipant
    ok_url: str
    dead_port: int
    stuck: str = ""
    active: str = ""
    committed: list[str] = field(default_factory=list)
    page: Any = None

    def tx_url(self, txid: str) -> str:
        return f"{self.page_url}/dashboard#/tx/{txid}"

    async def tx(self, txid: str) -> dict[str, Any]:
        r = await self.api.get(f"/v1/transactions/{txid}")
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def wait_state(self, txid: str, states: set[str]) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + EFFECT_TIMEOUT_S
        while True:
            t = await self.tx(txid)
            if t["state"] in states or asyncio.get_running_loop().time() > deadline:
                return t
            await asyncio.sleep(0.1)

    async def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def drive_traffic(live: Live, no_url: str) -> None:
    """Commits, aborts (a NO vote), one transaction stuck on a participant that is down,
    and one left active."""
    api = live.api

    async def one(i: int, vote_no: bool) -> str:
        r = await api.post("/v1/transactions", json={"labels": {"kind": "transfer"}})
        txid = r.json()["txid"]
        await api.post(
            f"/v1/transactions/{txid}/participants", json={"name": "bank-a", "url": live.ok_url}
        )
        await api.post(
            f"/v1/transactions/{txid}/participants",
            json={"name": "bank-b", "url": live.ok_url, "vote": "yes"},
        )
        if vote_no:
            await api.post(
                f"/v1/transactions/{txid}/participants",
                json={"name": "fraud-check", "url": no_url},
            )
        await api.post(f"/v1/transactions/{txid}/commit")
        return str(txid)

    live.committed = await asyncio.gather(*(one(i, False) for i in range(COMMITS)))
    await asyncio.gather(*(one(i, True) for i in range(ABORTS)))

    r = await api.post("/v1/transactions", json={"labels": {"order": "A-1001", "kind": "order"}})
    live.stuck = r.json()["txid"]
    dead = f"http://127.0.0.1:{live.dead_port}"
    for body in (
        {"name": "bank-a", "url": live.ok_url},
        {"name": "inventory", "url": dead, "vote": "yes"},
    ):
        r = await api.post(f"/v1/transactions/{live.stuck}/participants", json=body)
        assert r.status_code == 201, r.text
    r = await api.post(f"/v1/transactions/{live.stuck}/commit")
    assert r.json()["state"] == "committing", r.text

    r = await api.post(
        "/v1/transactions",
        json={"timeout_s": 600, "labels": {"order": "B-2002", "kind": "refund"}},
    )
    live.active = r.json()["txid"]
    r = await api.post(
        f"/v1/transactions/{live.active}/participants",
        json={"name": "bank-b", "url": live.ok_url, "vote": "yes"},
    )
    assert r.status_code == 201, r.text


@pytest_asyncio.fixture(scope="module")
async def live(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    pw_api, chromium = chromium_or_skip()
    tmp = tmp_path_factory.mktemp("dashboard")
    cluster = start_cluster(pg, tmp, 3, NODE_ENV)
    try:
        leader = cluster.leader()
        follower = next(n for n in cluster.nodes if n is not leader)
        ok, naysayer = ScriptedParticipant(), ScriptedParticipant(vote="no")
        admin = {"Authorization": f"Bearer {TOKENS['admin']}"}
        async with (
            serve(ok.app()) as ok_url,
            serve(naysayer.app()) as no_url,
            httpx.AsyncClient(base_url=leader.url, headers=admin, timeout=30) as api,
            pw_api.async_playwright() as pw,
        ):
            browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            w = Live(cluster, leader.url, follower.url, api, browser, ok, ok_url, free_port())
            await drive_traffic(w, no_url)
            w.page = await browser.new_page(viewport=VIEWPORT)
            w.page.set_default_timeout(UI_TIMEOUT_MS)
            try:
                yield w
            finally:
                await browser.close()  # closes its streams before the nodes stop
    finally:
        cluster.stop()


async def sign_in(page: Any, role: str) -> None:
    if await page.locator("#sign-out").is_visible():
        await page.click("#sign-out")
    await page.fill("#token-input", TOKENS[role])
    await page.click("#sign-in")
    await page.locator("#auth-state").filter(has_text=f"signed in · {role}").wait_for()


async def test_login_then_live_transactions_match_the_api(live: Live) -> None:
    from playwright.async_api import expect

    page = live.page
    await page.goto(live.page_url + "/dashboard")
    banner = page.locator("#auth-banner")
    await expect(banner).to_contain_text("401")
    await expect(banner).to_contain_text("requires an API token")
    await expect(page.locator("#live-empty")).to_have_text("Sign in to see transactions.")
    await live.shot("dashboard-login")

    await sign_in(page, "read")
    await expect(banner).to_have_count(0)
    row = page.locator(f'tr[data-txid="{live.stuck}"]')
    await expect(row).to_have_class("stuck")
    await expect(row).to_have_attribute("data-attention", "retrying")

    api_stuck = await live.tx(live.stuck)
    inv = next(p for p in api_stuck["participants"] if p["name"] == "inventory")
    assert inv["last_error"] and inv["phase2"] == "pending"
    await expect(row.locator(".err")).to_contain_text(inv["last_error"][:40])
    await expect(row.locator(".pill.s-committing")).to_have_text(api_stuck["state"])
    await expect(row).to_contain_text("A-1001")

    # The table holds exactly the API's unfinished transactions.
    items = (await live.api.get("/v1/transactions", params={"limit": 100})).json()["items"]
    unfinished = {t["txid"] for t in items if t["state"] not in ("committed", "aborted")}
    assert unfinished == {live.stuck, live.active}
    await expect(page.locator("#live-body tr")).to_have_count(len(unfinished))
    await expect(page.locator("#v-inflight")).to_have_text(str(len(unfinished)))
    await expect(page.locator("#v-stuck")).to_have_text("1")
    # Finished ones are listed too, with their outcomes.
    await expect(
        page.locator(f'#recent-body tr[data-txid="{live.committed[0]}"] .pill')
    ).to_have_text("commit")
    await live.shot("dashboard-transactions")

    await page.fill("#q", "B-2002")
    await expect(page.locator("#live-body tr")).to_have_count(1)
    await expect(page.locator(f'#live-body tr[data-txid="{live.active}"]')).to_be_visible()
    await page.fill("#q", "")

    # A read-only token sees the actions but may not use them.
    await page.goto(live.tx_url(live.active))
    await expect(page.locator("#tx-id")).to_have_text(live.active)
    await expect(page.locator("#act-abort")).to_be_disabled()


async def test_cluster_view_shows_the_leader_and_term_of_the_api(live: Live) -> None:
    from playwright.async_api import expect

    page = live.page
    await page.goto(live.page_url + "/dashboard#/cluster")
    # The page shows the view of the node that serves it: compare with that node's API.
    status = (await live.api.get(live.page_url + "/v1/cluster")).json()
    leader = status["leader"]
    await expect(page.locator("#members-body tr")).to_have_count(len(status["members"]))
    await expect(page.locator(f'tr[data-member="{leader}"] .pill.leader')).to_have_text("leader")
    await expect(page.locator("#fact-leader")).to_have_text(leader)
    await expect(page.locator("#fact-term")).to_have_text(str(status["term"]))
    await expect(page.locator("#fact-node")).to_have_text(status["node_id"])
    await expect(page.locator("#fact-role")).to_have_text(status["role"])
    for m in status["members"]:  # every member answers: all healthy
        await expect(page.locator(f'tr[data-member="{m["node_id"]}"] .pill.ok')).to_be_visible()
    # The retention figures, read when the view opened (checked against the API once they
    # no longer move, in the history test).
    for card in ("ret-records", "ret-tombstones", "ret-history", "ret-snapshot"):
        await expect(page.locator(f"#{card} .card-value")).not_to_be_empty()
    await expect(page.locator("#retention-note")).to_contain_text("counted them at")
    await live.shot("dashboard-cluster")


async def test_participants_and_activity_views(live: Live) -> None:
    from playwright.async_api import expect

    page = live.page
    await page.goto(live.page_url + "/dashboard#/participants")
    inv = page.locator('#participants-body tr[data-participant="inventory"]')
    await expect(inv.locator(".pill").first).to_have_text(re.compile("^(degraded|down)$"))
    api_inv = next(
        p for p in (await live.tx(live.stuck))["participants"] if p["name"] == "inventory"
    )
    await expect(inv.locator(".err")).to_contain_text(api_inv["last_error"][:40])
    ok_row = page.locator('#participants-body tr[data-participant="bank-a"]')
    await expect(ok_row.locator(".pill").first).to_have_text("ok")
    await expect(ok_row).to_contain_text("100 %")
    await live.shot("dashboard-participants")

    await page.goto(live.page_url + "/dashboard#/activity")
    await page.click('#span-buttons button[data-span="60"]')
    await expect(page.locator('#span-buttons button[data-span="60"]')).to_have_class("active")
    await expect(page.locator("#chart-throughput svg path").first).to_be_attached()
    await expect(page.locator("#chart-throughput svg")).to_contain_text("\u221230 s")  # minus
    await expect(page.locator("#activity-note")).to_contain_text("counted by node")
    await live.shot("dashboard-activity")


async def test_abort_an_active_transaction_after_confirming(live: Live) -> None:
    from playwright.async_api import expect

    page = live.page
    await page.goto(live.tx_url(live.active))
    await sign_in(page, "admin")
    abort = page.locator("#act-abort")
    await expect(abort).to_be_enabled()
    # Cancelling changes nothing.
    await abort.click()
    await expect(page.locator("#confirm")).to_be_visible()
    await page.click("#confirm-cancel")
    await expect(page.locator("#confirm")).to_be_hidden()
    assert (await live.tx(live.active))["state"] == "active"

    await abort.click()
    await expect(page.locator("#confirm-title")).to_have_text("Abort this transaction?")
    await page.click("#confirm-ok")
    t = await live.wait_state(live.active, {"aborted"})
    assert t["state"] == "aborted" and t["outcome"] == "abort"
    assert live.active in live.ok.aborted  # the participant was told to roll back
    await expect(page.locator(".tx-head .pill.s-aborted")).to_have_text("aborted")
    await expect(page.locator("#act-abort")).to_be_disabled()
    await expect(page.locator('#tx-timeline li[data-kind="decide"]')).to_contain_text("abort")
    audit = (await live.api.get("/v1/audit")).json()["items"]
    assert any(a["action"] == "abort" and a["txid"] == live.active for a in audit)


async def test_retry_phase_two_when_the_participant_is_back(live: Live) -> None:
    from playwright.async_api import expect

    page = live.page
    await page.goto(live.tx_url(live.stuck))
    await expect(page.locator('#tx-participants tr[data-participant="inventory"]')).to_have_class(
        "stuck"
    )
    await expect(page.locator('#tx-timeline li[data-kind="phase2_attempt"]').first).to_be_visible()
    await live.shot("dashboard-transaction")

    back = ScriptedParticipant()
    async with serve(back.app(), live.dead_port):
        await page.click("#act-retry")
        await expect(page.locator("#confirm-title")).to_have_text("Retry phase 2 now?")
        await page.click("#confirm-ok")
        await expect(page.locator(".toast").last).to_contain_text("retried now")
        t = await live.wait_state(live.stuck, {"committed"})
        assert t["state"] == "committed", t
        assert live.stuck in back.committed
        await expect(page.locator(".tx-head .pill.s-committed")).to_have_text("committed")


async def test_transfer_leadership_from_a_follower_page(live: Live) -> None:
    from playwright.async_api import expect

    page = live.page
    await page.goto(live.page_url + "/dashboard#/cluster")
    me = (await live.api.get(live.page_url + "/v1/cluster")).json()
    # The node serving the page, unless an election made it the leader meanwhile.
    target = me["node_id"]
    if me["role"] == "leader":
        target = next(m["node_id"] for m in me["members"] if m["node_id"] != me["leader"])
    button = page.locator(f'tr[data-member="{target}"] button[data-transfer]')
    await button.click()
    await expect(page.locator("#confirm-title")).to_contain_text(f"to {target}")
    await page.click("#confirm-ok")
    deadline = asyncio.get_running_loop().time() + EFFECT_TIMEOUT_S
    while (await live.api.get(live.page_url + "/v1/cluster")).json()["leader"] != target:
        assert asyncio.get_running_loop().time() < deadline, "leadership did not move"
        await asyncio.sleep(0.1)
    await expect(page.locator("#fact-leader")).to_have_text(target)


async def test_history_shows_forgotten_transactions_and_their_records(live: Live) -> None:
    """Once retention has forgotten every finished transaction of this module: the History
    view lists the history as the page node's API does (the leader's), filters it, opens a
    forgotten transaction's full record with when it was forgotten; the cluster view's
    retention figures are the API's; a transaction whose history row the leader lacks shows
    as a tombstone."""
    from playwright.async_api import expect

    page = live.page
    node = httpx.AsyncClient(base_url=live.page_url, headers=live.api.headers, timeout=30)
    # The abort and the retry tests finished the other two (unless they were left out).
    done = {
        t: (await live.tx(t))["state"] in ("committed", "aborted")
        for t in (live.active, live.stuck)
    }
    finished = len(live.committed) + ABORTS + sum(done.values())
    try:
        deadline = asyncio.get_running_loop().time() + FORGET_TIMEOUT_S
        while True:
            ret = (await node.get("/v1/cluster/retention")).json()
            unfinished = len(done) - sum(done.values())
            if (
                ret["records"] == unfinished
                and ret["history_rows"] == ret["tombstones"] == finished
            ):
                break
            assert asyncio.get_running_loop().time() < deadline, ret
            await asyncio.sleep(0.5)
        listed = (await node.get("/v1/transactions", params={"finished": "true"})).json()
        assert listed["source"] == "history" and len(listed["items"]) == finished

        await page.goto(live.page_url + "/dashboard#/history")
        await sign_in(page, "read")
        await page.click("#history-refresh")
        rows = page.locator("#history-body tr")
        await expect(rows).to_have_count(finished)
        await expect(page.locator("#tabs a.active")).to_have_text("History")
        # Newest first, as the API lists them.
        await expect(rows.first).to_have_attribute("data-txid", listed["items"][0]["txid"])
        first = page.locator(f'#history-body tr[data-txid="{live.committed[0]}"]')
        await expect(first.locator(".pill")).to_have_text("commit")
        await expect(first).to_contain_text("bank-a, bank-b")
        record = next(t for t in listed["items"] if t["txid"] == live.committed[0])
        await expect(first.locator("td.forgotten")).to_have_attribute(
            "title", record["forgotten_at"]
        )
        await expect(page.locator("#history-note")).to_contain_text(f"{finished} shown")
        await live.shot("dashboard-history")

        # The filters are the API's.
        await page.select_option("#history-state", "aborted")
        await expect(rows).to_have_count(ABORTS + done[live.active])
        await page.select_option("#history-state", "")
        await page.fill("#history-label", "order:A-1001")
        await page.press("#history-label", "Enter")
        await expect(rows).to_have_count(int(done[live.stuck]))
        if done[live.stuck]:
            await expect(rows.first).to_have_attribute("data-txid", live.stuck)
        await page.fill("#history-label", "order:nobody")
        await page.press("#history-label", "Enter")
        await expect(page.locator("#history-empty")).to_contain_text("matches")
        await page.fill("#history-label", "")
        await page.press("#history-label", "Enter")
        await expect(rows).to_have_count(finished)

        # A forgotten transaction's page: its full record, from this node's history.
        await first.locator("a.txid").click()
        await expect(page.locator("#tx-id")).to_have_text(live.committed[0])
        await expect(page.locator("#tx-source")).to_have_attribute("data-source", "history")
        await expect(page.locator("#tx-source")).to_contain_text("full record")
        await expect(page.locator(".tx-head .pill.src-history")).to_be_visible()
        await expect(page.locator("#tx-forgotten")).to_have_attribute(
            "title", record["forgotten_at"]
        )
        await expect(page.locator("#tx-participants tbody tr")).to_have_count(2)
        await expect(page.locator('#tx-timeline li[data-kind="forget"]')).to_be_visible()
        await expect(page.locator("#act-abort")).to_be_disabled()
        await expect(page.locator("#tabs a.active")).to_have_text("History")
        await live.shot("dashboard-transaction-forgotten")

        # The cluster view's retention figures: the API's, now that nothing moves.
        await page.goto(live.page_url + "/dashboard#/cluster")
        await page.click("#retention-refresh")
        ret = (await node.get("/v1/cluster/retention")).json()
        await expect(page.locator("#ret-records .card-value")).to_have_text(str(unfinished))
        await expect(page.locator("#ret-tombstones .card-value")).to_have_text(str(finished))
        await expect(page.locator("#ret-history .card-value")).to_have_text(str(finished))
        await expect(page.locator("#ret-snapshot .card-value")).not_to_be_empty()
        await expect(page.locator("#retention-note")).to_contain_text(ret["node_id"])

        # A node whose history lacks the record (it caught up by snapshot) has the tombstone.
        # The leader's: a follower passes the page's /v1 reads to it.
        # (By name: Cluster.leader reads /v1/cluster without a token, which this group refuses.)
        leader_id = (await node.get("/v1/cluster")).json()["leader"]
        leader = next(n for n in live.cluster.nodes if n.name == leader_id)
        engine = create_engine(leader.env["TXC_DATABASE_URL"])
        try:
            with engine.begin() as conn:
                gone = conn.execute(
                    text("DELETE FROM txc_archive WHERE txid = :t"), {"t": live.committed[1]}
                )
                assert gone.rowcount == 1
        finally:
            engine.dispose()
        await page.goto(live.tx_url(live.committed[1]))
        await expect(page.locator("#tx-source")).to_have_attribute("data-source", "tombstone")
        await expect(page.locator("#tx-source")).to_contain_text("Tombstone only")
        await expect(page.locator(".tx-head .pill.o-commit")).to_have_text("outcome commit")
        await expect(page.locator("#tx-no-participants")).to_be_visible()
    finally:
        await node.aclose()
