"""Structured logs carry the transaction id; W3C traceparent flows from the client through
the coordinator to the participants."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request

from coordinator import logs
from tests.helpers import serve
from tests.test_node import node_db, running_node  # noqa: F401 - fixture

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_json_lines_carry_txid_and_trace_context() -> None:
    fmt = logs.JsonFormatter("node7")
    record = logging.LogRecord(
        "txc.engine", logging.WARNING, __file__, 1, "phase 2 %s", ("slow",), None
    )
    token_t = logs.txid_var.set("tx-42")
    token_p = logs.traceparent_var.set(TRACEPARENT)
    try:
        line = json.loads(fmt.format(record))
    finally:
        logs.txid_var.reset(token_t)
        logs.traceparent_var.reset(token_p)
    assert line["txid"] == "tx-42" and line["traceparent"] == TRACEPARENT
    assert line["node"] == "node7" and line["level"] == "warning" and line["msg"] == "phase 2 slow"
    bare = json.loads(fmt.format(record))
    assert "txid" not in bare and "traceparent" not in bare


def test_traceparent_validation_and_txid_from_path() -> None:
    assert logs.valid_traceparent(TRACEPARENT) == TRACEPARENT
    assert logs.valid_traceparent(TRACEPARENT.upper()) == TRACEPARENT
    assert logs.valid_traceparent("00-xyz") is None and logs.valid_traceparent(None) is None
    assert logs.txid_from_path("/v1/transactions/abc/commit") == "abc"
    assert logs.txid_from_path("/v1/transactions") is None


async def test_traceparent_reaches_the_participants(node_db: str) -> None:  # noqa: F811
    seen: list[str | None] = []
    app = FastAPI()

    @app.post("/{action}")
    async def act(action: str, request: Request) -> dict[str, str]:
        seen.append(request.headers.get("traceparent"))
        return {"vote": "yes"}

    async with serve(app) as purl, running_node(node_db) as c:
        tx = (await c.post("/v1/transactions", json={})).json()["txid"]
        await c.post(f"/v1/transactions/{tx}/participants", json={"name": "p", "url": purl})
        r = await c.post(f"/v1/transactions/{tx}/commit", headers={"traceparent": TRACEPARENT})
        assert r.json()["outcome"] == "commit"
    assert seen == [TRACEPARENT, TRACEPARENT]  # prepare and commit
