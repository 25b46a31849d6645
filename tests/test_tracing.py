"""Optional OpenTelemetry: a commit is a span under the caller's traceparent, each request
to a participant a child span whose context the participant receives."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request

from coordinator import tracing
from tests.helpers import serve
from tests.test_node import node_db, running_node  # noqa: F401 - fixture

otel = pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra is not installed")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def test_commit_and_participant_calls_are_spans_in_the_callers_trace(node_db: str) -> None:  # noqa: F811
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    seen: list[str | None] = []
    app = FastAPI()

    @app.post("/{action}")
    async def act(action: str, request: Request) -> dict[str, str]:
        seen.append(request.headers.get("traceparent"))
        return {"vote": "yes"}

    try:
        async with serve(app) as purl, running_node(node_db, otel="global") as c:
            assert tracing.enabled()
            tx = (await c.post("/v1/transactions", json={})).json()["txid"]
            await c.post(f"/v1/transactions/{tx}/participants", json={"name": "p", "url": purl})
            r = await c.post(f"/v1/transactions/{tx}/commit", headers={"traceparent": TRACEPARENT})
            assert r.json()["outcome"] == "commit"
    finally:
        tracing.configure("")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    commit = spans["txc.commit"]
    assert f"{commit.context.trace_id:032x}" == TRACE_ID
    assert commit.attributes["txc.txid"] == tx and commit.attributes["txc.outcome"] == "commit"
    prepare = spans["txc.participant.prepare"]
    assert prepare.parent is not None and prepare.parent.span_id == commit.context.span_id
    # The participant received the child span's context, in the caller's trace.
    assert seen and all(tp and tp.split("-")[1] == TRACE_ID for tp in seen)
    assert seen[0] != TRACEPARENT
