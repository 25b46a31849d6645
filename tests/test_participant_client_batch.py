"""ParticipantClient.call_batch against a real HTTP server that answers `/batch` in every way
a participant might: a conforming answer becomes one Reply per message; anything else is
either "send them one by one" (None) or, when nothing could be read, every message's
failure, never another message's answer."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from coordinator.bench.serving import serve
from coordinator.participant_client import ParticipantClient

MESSAGES = [("commit", "t1"), ("abort", "t2")]
STATES = {"commit": "committed", "abort": "aborted"}


def conforming(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "results": [
            {
                "txid": m["txid"],
                "action": m["action"],
                "status": 200,
                "body": {"txid": m["txid"], "state": STATES[m["action"]]},
            }
            for m in body["messages"]
        ]
    }


def app_answering(answer: Any) -> FastAPI:
    """`answer(body)` -> (status, JSON-able body or raw bytes)."""
    app = FastAPI()
    seen: list[dict[str, Any]] = []
    app.state.seen = seen

    @app.post("/txc/batch")
    async def batch(request: Request) -> Response:
        body = json.loads(await request.body())
        seen.append(body)
        status, content = answer(body)
        if isinstance(content, bytes):
            return Response(content, status_code=status, media_type="application/json")
        return JSONResponse(content, status_code=status)

    return app


async def call(answer: Any, messages: list[tuple[str, str]] = MESSAGES) -> Any:
    app = app_answering(answer)
    client = ParticipantClient()
    await client.start()
    try:
        async with serve(app) as url:
            return await client.call_batch(url + "/txc", "p", messages, 5.0), app.state.seen
    finally:
        await client.close()


async def test_a_conforming_answer_is_one_reply_per_message() -> None:
    replies, seen = await call(lambda b: (200, conforming(b)))
    assert seen == [
        {
            "participant": "p",
            "messages": [{"action": "commit", "txid": "t1"}, {"action": "abort", "txid": "t2"}],
        }
    ]
    assert [(r.status, r.body["state"], r.error) for r in replies] == [
        (200, "committed", None),
        (200, "aborted", None),
    ]


async def test_a_message_error_is_that_message_s_reply() -> None:
    def answer(b: dict[str, Any]) -> tuple[int, Any]:
        out = conforming(b)
        out["results"][1].update(
            status=409, body={"error": {"code": "heuristic_commit", "message": "m"}}
        )
        return 200, out

    replies, _ = await call(answer)
    assert replies[0].status == 200 and replies[0].error is None
    assert replies[1].status == 409 and replies[1].error_code == "heuristic_commit"
    assert replies[1].error is not None and "heuristic_commit" in replies[1].error


async def test_answers_that_do_not_match_mean_one_by_one() -> None:
    """Every such answer: the participant does not speak /batch as we do; nothing in it is
    taken as any message's answer."""

    def mutate(change: Any) -> Any:
        def answer(b: dict[str, Any]) -> tuple[int, Any]:
            out = conforming(b)
            change(out["results"])
            return 200, out

        return answer

    cases = [
        mutate(lambda rs: rs.pop()),  # one result short
        mutate(lambda rs: rs.reverse()),  # txids swapped
        mutate(lambda rs: rs[0].update(action="abort")),  # another action
        mutate(lambda rs: rs[0].update(status=True)),  # not an int
        mutate(lambda rs: rs[0].update(status=99)),
        mutate(lambda rs: rs[0].update(status="200")),
        mutate(lambda rs: rs[0].update(body=[1])),
        mutate(lambda rs: rs.__setitem__(0, "x")),
        lambda b: (200, {"results": "x"}),
        lambda b: (200, {}),
        lambda b: (200, b"not json"),
        lambda b: (200, b"[1, 2]"),
    ]
    for answer in cases:
        replies, seen = await call(answer)
        assert replies is None and len(seen) == 1


async def test_refusals_of_the_whole_batch_mean_one_by_one() -> None:
    """No batch endpoint (404/405/501), or one that refuses it (an auth layer that only
    knows the three DESIGN §5 paths, a catch-all route, a smaller body limit): the messages
    go one by one; a whole-batch body (even a heuristic code) is never a message's answer."""
    for status in (400, 401, 403, 404, 405, 409, 413, 422, 501):
        body = {"error": {"code": "heuristic_abort", "message": "whole batch"}}
        replies, _ = await call(lambda b, s=status, body=body: (s, body))
        assert replies is None, status


async def test_no_answer_or_server_error_fails_every_message_alone() -> None:
    replies, _ = await call(lambda b: (503, {"error": {"code": "heuristic_abort", "message": "x"}}))
    assert [r.status for r in replies] == [503, 503]
    assert all(r.body == {} and r.error_code is None for r in replies)
    client = ParticipantClient()
    await client.start()
    try:  # nobody listens there
        replies = await client.call_batch("http://127.0.0.1:9/txc", "p", MESSAGES, 2.0)
    finally:
        await client.close()
    assert replies is not None and [r.status for r in replies] == [None, None]
    assert all(r.error for r in replies)


async def test_a_large_answer_is_read_whole() -> None:
    """Bigger than one network read: a first-chunk read would cut it and garble it."""
    messages = [("commit", f"t{i:04d}-" + "x" * 60) for i in range(256)]

    def answer(b: dict[str, Any]) -> tuple[int, Any]:
        out = conforming(b)
        for r in out["results"]:
            r["body"]["pad"] = "y" * 300
        return 200, out

    replies, _ = await call(answer, messages)
    assert replies is not None and len(replies) == 256
    assert all(r.status == 200 for r in replies)
