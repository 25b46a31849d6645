"""The coordinator's API against a hostile caller, over real HTTP and real PostgreSQL (issue
16): every operation of the OpenAPI description without credentials or with a role that may
not, oversized and slow bodies, and a property-based fuzz run over the schema (no 5xx, no
half-applied state)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import string
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator import migrate
from tests.helpers import trickle
from tests.test_node import running_node

ADMIN, CLIENT, READ, PART = ("a" * 24, "c" * 24, "r" * 24, "p" * 24)
TOKENS = f"admin={ADMIN},client={CLIENT},read={READ},participant={PART}"
OPEN_PATHS = {"/healthz", "/readyz", "/metrics"}


@pytest.fixture
def node_db(db_url: str) -> str:
    migrate.upgrade(db_url, "coordinator")
    return db_url


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for path, item in schema["paths"].items():
        for method, op in item.items():
            if method in ("get", "post", "put", "delete", "patch"):
                out.append((method.upper(), path, op))
    return out


def concrete(path: str, value: str = "t-hostile-1") -> str:
    return re.sub(r"\{[^}]+\}", value, path)


async def test_every_operation_refuses_a_caller_without_credentials(node_db: str) -> None:
    async with running_node(node_db, api_tokens=TOKENS) as c:
        schema = (await c.get("/openapi.json")).json()
        ops = operations(schema)
        assert len(ops) >= 15  # the whole API, not a sample
        for method, path, _ in ops:
            url = concrete(path)
            if path in OPEN_PATHS or not path.startswith("/v1"):
                continue
            r = await c.request(method, url, json={} if method != "GET" else None)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.json()["error"]["code"] == "unauthenticated"
            r = await c.request(method, url, headers=bearer("x" * 24))
            assert r.status_code == 401, (method, path)
            if method != "GET":
                # A reader changes nothing; a participant token does only its two calls.
                r = await c.request(method, url, json={}, headers=bearer(READ))
                assert r.status_code == 403, (method, path, r.status_code)
        # Nothing was created by any of it.
        listed = await c.get("/v1/transactions", headers=bearer(ADMIN))
        assert listed.status_code == 200 and listed.json()["items"] == []


async def test_oversized_bodies_are_refused_before_parsing(node_db: str) -> None:
    async with running_node(node_db, api_tokens=TOKENS, max_body_bytes=4096) as c:
        big = {"labels": {"k": "v" * 10_000}}
        r = await c.post("/v1/transactions", json=big, headers=bearer(CLIENT))
        assert (r.status_code, r.json()["error"]["code"]) == (413, "body_too_large")

        async def chunks() -> Any:  # no Content-Length: the size is only known as it comes
            for _ in range(10):
                yield b" " * 1024

        r = await c.post("/v1/transactions", content=chunks(), headers=bearer(CLIENT))
        assert r.status_code == 413
        assert (await c.get("/v1/transactions", headers=bearer(ADMIN))).json()["items"] == []


def _slow_request(port: int, path: str, token: str, pause_s: float, within_s: float) -> str:
    """Headers announcing 200 bytes, then a byte every `pause_s` (tests.helpers.trickle)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    ).encode()
    return trickle(port, head, pause_s, within_s)


async def test_a_slow_body_is_cut_off_and_the_node_keeps_serving(node_db: str) -> None:
    async with running_node(node_db, api_tokens=TOKENS, body_read_timeout_s=1.0) as c:
        port = int(str(c.base_url).rsplit(":", 1)[1])
        started = time.monotonic()
        lines = await asyncio.gather(
            *(
                asyncio.to_thread(_slow_request, port, "/v1/transactions", CLIENT, 0.2, 10.0)
                for _ in range(8)
            )
        )
        took = time.monotonic() - started
        assert all(" 408 " in ln for ln in lines), lines
        assert took < 5.0, took  # the bound, not the sender's patience
        r = await c.post("/v1/transactions", json={}, headers=bearer(CLIENT))
        assert r.status_code == 201


def _silent_or_trickled(port: int, trickled: bool, within_s: float) -> str:
    """A connection that sends nothing, or a request line and then a header byte every
    0.2 s (tests.helpers.trickle); the status line of the answer."""
    if trickled:
        head = b"GET /v1/transactions HTTP/1.1\r\nHost: x\r\nX-Slow: "
        return trickle(port, head, 0.2, within_s)
    with socket.create_connection(("127.0.0.1", port), timeout=within_s) as s:
        data = s.recv(4096)
    return data.decode(errors="replace").split("\r\n", 1)[0] if data else "closed"


async def test_slow_or_missing_headers_are_cut_off_and_the_node_keeps_serving(
    node_db: str,
) -> None:
    async with running_node(node_db, api_tokens=TOKENS, header_timeout_s=1.0) as c:
        port = int(str(c.base_url).rsplit(":", 1)[1])
        started = time.monotonic()
        lines = await asyncio.gather(
            *(asyncio.to_thread(_silent_or_trickled, port, i % 2 == 1, 10.0) for i in range(16))
        )
        took = time.monotonic() - started
        assert all(" 408 " in ln for ln in lines), lines
        assert took < 5.0, took  # the bound, not the sender's patience
        r = await c.post("/v1/transactions", json={}, headers=bearer(CLIENT))
        assert r.status_code == 201
        # A kept-alive connection is not cut off between or during honest requests.
        for _ in range(3):
            await asyncio.sleep(0.6)
            r = await c.post("/v1/transactions", json={}, headers=bearer(CLIENT))
            assert r.status_code == 201


# -- fuzzing over the schema ---------------------------------------------------------------

_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
)
_json = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
_segment = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits + "-_.:", min_size=1, max_size=70),
    st.sampled_from(["..", "%2e%2e", "t-1", "a" * 200, "%00", "ü", "t-1%2Fx"]),
)


def _from_schema(schema: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> Any:
    """Values that fit `schema` roughly (enough to get past validation sometimes), mixed
    with values that do not (so that validation itself is fuzzed too)."""
    if "$ref" in schema:
        schema = defs.get(schema["$ref"].rsplit("/", 1)[-1], {})
    if depth > 3:
        return _json
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return st.one_of(*(_from_schema(s, defs, depth + 1) for s in schema[key]))
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return st.fixed_dictionaries(
            {}, optional={k: _from_schema(v, defs, depth + 1) for k, v in props.items()}
        )
    if kind == "array":
        return st.lists(_from_schema(schema.get("items", {}), defs, depth + 1), max_size=3)
    if kind == "string":
        return st.text(max_size=schema.get("maxLength", 60) + 5)
    if kind == "integer":
        return st.integers(min_value=-10, max_value=10**12)
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e12)
    if kind == "boolean":
        return st.booleans()
    return _json


def _body_strategy(op: dict[str, Any], defs: dict[str, Any]) -> Any:
    content = op.get("requestBody", {}).get("content", {}).get("application/json")
    if content is None:
        return st.none()
    return st.one_of(_from_schema(content.get("schema", {}), defs), _json)


async def test_fuzzing_the_api_gets_no_5xx_and_leaves_valid_state(node_db: str) -> None:
    async with running_node(node_db, api_tokens=TOKENS) as c:
        schema = (await c.get("/openapi.json")).json()
        defs = schema.get("components", {}).get("schemas", {})
        ops = [
            (m, p, op)
            for m, p, op in operations(schema)
            if p.startswith("/v1")
            # The dashboard's and the cluster's admin actions change the group itself
            # (membership, leadership); they have their own tests.
            and not p.startswith("/v1/cluster/")
        ]
        calls = st.one_of(
            *(
                st.tuples(
                    st.just(m),
                    st.just(p),
                    st.lists(_segment, min_size=p.count("{"), max_size=p.count("{")),
                    _body_strategy(op, defs),
                    st.sampled_from([ADMIN, CLIENT, PART, READ]),
                )
                for m, p, op in ops
            )
        )
        seen: list[tuple[str, str, int]] = []
        loop = asyncio.get_running_loop()

        @settings(
            max_examples=300,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(calls)
        def one(call: tuple[str, str, list[str], Any, str]) -> None:
            method, path, segments, body, token = call
            url = path
            for seg in segments:
                url = re.sub(r"\{[^}]+\}", seg.replace("/", "%2F"), url, count=1)
            fut = asyncio.run_coroutine_threadsafe(
                c.request(
                    method,
                    url,
                    content=None if body is None else json.dumps(body).encode(),
                    headers=bearer(token) | {"Content-Type": "application/json"},
                ),
                loop,
            )
            r = fut.result(timeout=60)
            seen.append((method, path, r.status_code))
            assert r.status_code < 500, (method, url, body, r.status_code, r.text[:300])

        await asyncio.to_thread(one)
        assert len({p for _, p, _ in seen}) > 5  # many operations were reached
        codes = [code for _, _, code in seen]
        # Both valid calls and refused ones: the generator gets past validation, and tries it.
        assert sum(200 <= c < 300 for c in codes) >= 10, sorted(set(codes))
        assert sum(400 <= c < 500 for c in codes) >= 10, sorted(set(codes))
        # Whatever the run created is in a state the API names, and the node is healthy.
        states = {"active", "preparing", "committing", "committed", "aborting", "aborted"}
        page = await c.get("/v1/transactions?limit=200", headers=bearer(ADMIN))
        assert page.status_code == 200
        for t in page.json()["items"]:
            assert t["state"] in states, t
            full = await c.get(f"/v1/transactions/{t['txid']}", headers=bearer(ADMIN))
            assert full.status_code == 200, full.text
        assert (await c.get("/readyz")).status_code == 200
