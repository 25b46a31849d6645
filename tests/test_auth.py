"""Authentication and authorization of the public API: every role boundary, missing and
unknown tokens, production refusing to start open, and the audit trail of admin actions."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI, Request

from coordinator.auth import fingerprint
from coordinator.config import ConfigError, Settings
from tests.helpers import ScriptedParticipant, serve
from tests.test_node import node_db, running_node  # noqa: F401 - fixture

TOKENS = {
    "admin": "admin-token-0123456789",
    "client": "client-token-0123456789",
    "participant": "participant-token-0123456789",
    "read": "read-token-0123456789",
}
API_TOKENS = ",".join(f"{role}={tok}" for role, tok in TOKENS.items())


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


# (method, path template, body, roles allowed besides admin). {tx} is an active transaction.
MATRIX: list[tuple[str, str, Any, set[str]]] = [
    ("POST", "/v1/transactions", {}, {"client"}),
    ("GET", "/v1/transactions", None, {"client", "read"}),
    ("GET", "/v1/transactions/{tx}", None, {"client", "read"}),
    ("GET", "/v1/transactions/{tx}/timeline", None, {"client", "read"}),
    ("POST", "/v1/transactions/{tx}/participants", {"name": "p", "url": "{purl}"}, {"participant"}),
    ("GET", "/v1/transactions/{tx}/outcome", None, {"participant"}),
    ("POST", "/v1/transactions/{tx}/retry", None, set()),
    ("POST", "/v1/transactions/{tx}/heuristic/acknowledge", None, set()),
    ("GET", "/v1/cluster", None, {"client", "read"}),
    ("GET", "/v1/audit", None, {"client", "read"}),
    ("POST", "/v1/cluster/transfer-leadership", {"to": 2}, set()),
    ("POST", "/v1/transactions/{tx}/commit", None, {"client"}),
    ("POST", "/v1/transactions/{tx}/abort", None, {"client"}),
]


async def test_every_role_boundary(node_db: str) -> None:  # noqa: F811
    p = ScriptedParticipant()
    async with serve(p.app()) as purl, running_node(node_db, api_tokens=API_TOKENS) as c:
        for method, template, body, allowed in MATRIX:
            for role in TOKENS:
                tx = (await c.post("/v1/transactions", json={}, headers=auth("client"))).json()[
                    "txid"
                ]
                path = template.format(tx=tx)
                payload = None
                if body is not None:
                    payload = {
                        k: (v.format(purl=purl) if isinstance(v, str) else v)
                        for k, v in body.items()
                    }
                r = await c.request(method, path, json=payload, headers=auth(role))
                if role == "admin" or role in allowed:
                    # Allowed: whatever the answer, it is not an authorization refusal.
                    assert r.status_code not in (401, 403), (method, path, role, r.text)
                else:
                    assert r.status_code == 403, (method, path, role, r.text)
                    assert r.json()["error"]["code"] == "forbidden"


async def test_missing_and_unknown_tokens_are_401_and_health_stays_open(node_db: str) -> None:  # noqa: F811
    async with running_node(node_db, api_tokens=API_TOKENS) as c:
        r = await c.post("/v1/transactions", json={})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = await c.post(
            "/v1/transactions", json={}, headers={"Authorization": "Bearer not-a-token-at-all"}
        )
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
        r = await c.post(
            "/v1/transactions", json={}, headers={"Authorization": "Basic YWxhZGRpbjpvcGVu"}
        )
        assert r.status_code == 401
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await c.get(path)).status_code == 200


async def test_admin_actions_are_audited_by_fingerprint_never_by_token(node_db: str) -> None:  # noqa: F811
    async with running_node(node_db, api_tokens=API_TOKENS) as c:
        tx = (await c.post("/v1/transactions", json={}, headers=auth("client"))).json()["txid"]
        client_abort = (await c.post("/v1/transactions", json={}, headers=auth("client"))).json()[
            "txid"
        ]
        assert (
            await c.post(f"/v1/transactions/{client_abort}/abort", headers=auth("client"))
        ).status_code == 200
        assert (
            await c.post(f"/v1/transactions/{tx}/abort", headers=auth("admin"))
        ).status_code == 200
        trail = (await c.get("/v1/audit", headers=auth("read"))).json()["items"]
        assert [(e["action"], e["txid"]) for e in trail] == [("abort", tx)]
        entry = trail[0]
        assert entry["actor"] == f"admin:{fingerprint(TOKENS['admin'])}"
        assert TOKENS["admin"] not in str(trail)
        assert entry["at"].endswith("Z")


def test_production_refuses_to_start_without_credentials() -> None:
    base: dict[str, Any] = {"database_url": "postgresql://x/y", "environment": "production"}
    with pytest.raises(ConfigError, match="admin token"):
        Settings(**base, participant_token="p" * 20).validate()
    with pytest.raises(ConfigError, match="TXC_PARTICIPANTS_FILE"):
        Settings(**base, api_token="a" * 20).validate()
    with pytest.raises(ConfigError, match="TXC_PARTICIPANTS_FILE"):  # one shared secret
        Settings(**base, api_token="a" * 20, participant_token="p" * 20).validate()
    with pytest.raises(ConfigError, match="unknown role"):
        Settings(database_url="x", api_tokens="root=" + "x" * 20).validate()
    with pytest.raises(ConfigError, match="at least"):
        Settings(database_url="x", api_tokens="client=short").validate()


async def test_the_participant_secret_is_never_sent_as_is(node_db: str) -> None:  # noqa: F811
    """Phase-2 requests carry a signature, not the secret."""
    seen: list[dict[str, str]] = []
    app = FastAPI()

    @app.post("/{action}")
    async def any_action(action: str, request: Request) -> dict[str, str]:
        seen.append(dict(request.headers))
        return {"vote": "yes"}

    secret = "participant-secret-0123456789"
    async with serve(app) as purl, running_node(node_db, participant_token=secret) as c:
        tx = (await c.post("/v1/transactions", json={})).json()["txid"]
        await c.post(f"/v1/transactions/{tx}/participants", json={"name": "p", "url": purl})
        r = await c.post(f"/v1/transactions/{tx}/commit")
        assert r.json()["outcome"] == "commit", r.text
    assert len(seen) >= 2
    for headers in seen:
        assert headers["txc-signature"].startswith("v1=")
        assert secret not in str(headers)
