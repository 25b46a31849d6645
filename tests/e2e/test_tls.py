"""TLS where configured: a 3-node group serving HTTPS, replicating over HTTPS and calling an
https participant, each verifying the others against a private CA."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import httpx
import pytest
import trustme
import uvicorn

from coordinator import migrate
from coordinator.bench.serving import null_participant_app
from coordinator.embedded_pg import free_port
from coordinator.procs import Proc, node_env, peers_for, stop_all
from tests.conftest import PgServer
from tests.processes import TEST_NODE_ENV, TEST_SECRET

pytestmark = pytest.mark.e2e


async def test_a_group_over_tls(pg: PgServer, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    with cert_file.open("ab") as f:
        for pem in cert.cert_chain_pems[1:]:
            f.write(pem.bytes())

    # An https participant, verified by the coordinator against the same CA.
    pport = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            null_participant_app(), host="127.0.0.1", port=pport, log_level="warning",
            ssl_certfile=str(cert_file), ssl_keyfile=str(key_file),
        )
    )  # fmt: skip
    serving = asyncio.create_task(server.serve())
    ports = [free_port() for _ in range(3)]
    peers = peers_for(ports).replace("http://", "https://")
    tls = {
        "TXC_TLS_CERTFILE": str(cert_file),
        "TXC_TLS_KEYFILE": str(key_file),
        "TXC_TLS_CA_FILE": str(ca_file),
    }
    nodes = []
    try:
        for i, port in enumerate(ports):
            db = pg.new_database(f"tls{i + 1}")
            migrate.upgrade(db, "coordinator")
            env = {**TEST_NODE_ENV, **node_env(i + 1, port, db, peers, TEST_SECRET, 3), **tls}
            url = f"https://127.0.0.1:{port}"
            node = Proc(
                f"node{i + 1}",
                ["-m", "coordinator", "serve"],
                env,
                url,
                tmp_path / f"n{i}.log",
                ca_file=str(ca_file),
            )
            nodes.append(node.start())
        for n in nodes:
            await asyncio.to_thread(n.wait_ready, "/readyz")
        ctx = ssl.create_default_context(cafile=str(ca_file))
        async with httpx.AsyncClient(verify=ctx, timeout=10) as c:
            # Any node: followers forward to the leader over HTTPS.
            tx = (await c.post(nodes[1].url + "/v1/transactions", json={})).json()["txid"]
            body = {"name": "p", "url": f"https://127.0.0.1:{pport}"}
            assert (
                await c.post(nodes[2].url + f"/v1/transactions/{tx}/participants", json=body)
            ).status_code == 201
            r = await c.post(nodes[0].url + f"/v1/transactions/{tx}/commit")
            assert r.status_code == 200 and r.json()["state"] == "committed", r.text
            cluster = (await c.get(nodes[0].url + "/v1/cluster")).json()
            assert all(m["url"].startswith("https://") for m in cluster["members"])
            # Raft messages went over the signed stream, on TLS too (wss://).
            assert cluster["batches_streamed"] > 0, cluster
            # A forwarded answer says where the leader is (clients go there next time).
            leader_url = cluster["leader_url"]
            follower = next(n for n in nodes if n.url.rstrip("/") != leader_url.rstrip("/"))
            r = await c.post(follower.url + "/v1/transactions", json={})
            assert r.status_code == 201 and r.headers["Txc-Leader"] == leader_url, r.headers
        # Plain HTTP is not served, and a client that does not trust the CA is refused.
        async with httpx.AsyncClient(timeout=2) as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"http://127.0.0.1:{ports[0]}/healthz")
            with pytest.raises(httpx.ConnectError):  # certificate not trusted
                await plain.get(nodes[0].url + "/healthz")
    finally:
        stop_all(nodes)
        server.should_exit = True
        await serving
