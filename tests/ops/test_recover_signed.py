"""`txc recover --apply` against a coordinator with a participant registry: the outcome
queries are signed with the participant's own secret and only signed answers count, so
recovery cannot be talked into a decision by whoever answers on the path. A wrong secret
resolves nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from participant_sdk import PgResourceManager, make_gid
from tests.conftest import PgServer
from tests.ops.helpers import DEAD_URL, make_bank, txc_json
from tests.test_node import running_node

SECRET = "bank-secret-0123456789"
ADMIN, CLIENT = "admin-token-0123456789", "client-token-0123456789"


def _registry(tmp_path: Path) -> str:
    path = tmp_path / "participants.toml"
    path.write_text(f'[participants.bank]\nsecrets = ["{SECRET}"]\nurls = ["{DEAD_URL}/txc"]\n')
    path.chmod(0o600)
    return str(path)


async def test_recover_signs_as_the_participant_and_needs_its_secret(
    pg: PgServer, node_db: str, tmp_path: Path
) -> None:
    bank = make_bank(pg, "bank")
    try:
        async with running_node(
            node_db,
            phase2_inline_wait_s=0.2,
            participant_token="",
            participants_file=_registry(tmp_path),
            api_tokens=f"admin={ADMIN},client={CLIENT}",
        ) as c:
            url = str(c.base_url)
            client = {"Authorization": f"Bearer {CLIENT}"}
            r = await c.post("/v1/transactions", json={}, headers=client)
            txid = r.json()["txid"]

            def work() -> None:  # prepared and enlisted by the participant's own signature
                rm = PgResourceManager(
                    "bank", bank.engine, public_url=DEAD_URL, coordinator_url=url,
                    participant_token=SECRET,
                )  # fmt: skip
                try:
                    with rm.work(txid) as w:
                        w.connection.exec_driver_sql(
                            "UPDATE accounts SET balance = balance + 10 WHERE id = 'a'"
                        )
                finally:
                    rm.close()

            await asyncio.to_thread(work)
            r = await c.post(f"/v1/transactions/{txid}/commit", headers=client)
            assert r.json()["outcome"] == "commit", r.text  # phase 2 cannot reach the bank
            run = ("--url", url, "--token", ADMIN, "recover", "--participant", "bank")
            run += ("--database-url", bank.url, "--apply")

            code, report = await asyncio.to_thread(
                txc_json, *run, "--participant-token", "not-the-secret-0123456789"
            )
            assert code == 1, report
            (item,) = report["items"]
            assert (item["txid"], item["action"]) == (txid, "error"), report
            assert "not signed by the coordinator (HTTP 401)" in item["error"], report
            assert "participant_token" in item["error"], report
            assert bank.prepared() == [make_gid("bank", txid)]
            assert bank.balances()["a"] == 100

            code, report = await asyncio.to_thread(txc_json, *run, "--participant-token", SECRET)
            assert code == 0, report
            assert [(i["txid"], i["action"]) for i in report["items"]] == [(txid, "committed")]
            assert bank.prepared() == [] and bank.balances()["a"] == 110
    finally:
        bank.cleanup()
