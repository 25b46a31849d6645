"""Phase2Batcher: when messages travel together, alone, or fall back, and that every caller
gets its own answer whatever happens to the request that carried it."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from coordinator import phase2_batch
from coordinator.participant_client import Reply
from coordinator.phase2_batch import UNSUPPORTED_RECHECK_S, Phase2Batcher

URL = "http://p.example/txc"


class FakeClient:
    """Records requests; each waits for `release` so that tests decide when answers come."""

    def __init__(self, batch_supported: bool = True) -> None:
        self.singles: list[tuple[str, str]] = []
        self.batches: list[list[tuple[str, str]]] = []
        self.release = asyncio.Event()
        self.batch_supported = batch_supported
        self.batch_error: Exception | None = None
        self.batch_release: asyncio.Event | None = None  # None: `release` for batches too

    async def call(
        self, base_url: str, action: str, txid: str, participant: str, timeout_s: float
    ) -> Reply:
        self.singles.append((action, txid))
        await self.release.wait()
        return Reply(200, {"txid": txid, "state": f"{action}-single"})

    async def call_batch(
        self,
        base_url: str,
        participant: str,
        messages: list[tuple[str, str]],
        timeout_s: float,
    ) -> list[Reply] | None:
        self.batches.append(list(messages))
        await (self.batch_release or self.release).wait()
        if self.batch_error is not None:
            raise self.batch_error
        if not self.batch_supported:
            return None
        return [Reply(200, {"txid": t, "state": f"{a}-batched"}) for a, t in messages]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_messages_wait_for_a_free_request_and_then_travel_together() -> None:
    client = FakeClient()
    b = Phase2Batcher(client, max_batch=3, max_inflight=1)
    calls = [
        asyncio.create_task(b.call(URL, "commit" if i % 2 else "abort", f"t{i}", "p", 5.0))
        for i in range(6)
    ]
    await settle()
    # The first went alone, at once; the others wait for it.
    assert client.singles == [("abort", "t0")] and client.batches == []
    client.release.set()
    replies = await asyncio.gather(*calls)
    assert client.batches == [
        [("commit", "t1"), ("abort", "t2"), ("commit", "t3")],  # at most max_batch
        [("abort", "t4"), ("commit", "t5")],
    ]
    assert [r.body["txid"] for r in replies] == [f"t{i}" for i in range(6)]
    assert replies[0].body["state"] == "abort-single"
    assert replies[3].body["state"] == "commit-batched"
    assert (b.batches_sent, b.messages_batched) == (2, 5)


async def test_prepare_and_other_participants_are_not_held_up() -> None:
    client = FakeClient()
    b = Phase2Batcher(client, max_batch=8, max_inflight=1)
    first = asyncio.create_task(b.call(URL, "commit", "t0", "p", 5.0))
    await settle()
    other = asyncio.create_task(b.call(URL, "commit", "t1", "q", 5.0))  # its own lane
    prep = asyncio.create_task(b.call(URL, "prepare", "t2", "p", 5.0))  # never batched
    await settle()
    assert sorted(client.singles) == [("commit", "t0"), ("commit", "t1"), ("prepare", "t2")]
    client.release.set()
    await asyncio.gather(first, other, prep)
    assert client.batches == []


async def test_max_batch_one_sends_every_message_alone() -> None:
    client = FakeClient()
    client.release.set()
    b = Phase2Batcher(client, max_batch=1, max_inflight=1)
    await asyncio.gather(*(b.call(URL, "commit", f"t{i}", "p", 5.0) for i in range(5)))
    assert len(client.singles) == 5 and client.batches == []


async def test_participant_without_batch_endpoint_gets_messages_alone() -> None:
    now = [1000.0]
    client = FakeClient(batch_supported=False)
    b = Phase2Batcher(client, max_batch=8, max_inflight=1, clock=lambda: now[0])

    async def burst(prefix: str) -> list[Reply]:
        client.release.clear()
        tasks = [
            asyncio.create_task(b.call(URL, "commit", f"{prefix}{i}", "p", 5.0)) for i in range(4)
        ]
        await settle()
        client.release.set()
        return list(await asyncio.gather(*tasks))

    replies = await burst("a")
    # Asked once, answered "no such endpoint": the same messages went one by one.
    assert client.batches == [[("commit", "a1"), ("commit", "a2"), ("commit", "a3")]]
    assert [r.body["state"] for r in replies] == ["commit-single"] * 4
    assert [t for _, t in client.singles] == ["a0", "a1", "a2", "a3"]
    await burst("b")
    assert len(client.batches) == 1  # not asked again ...
    now[0] += UNSUPPORTED_RECHECK_S + 1
    await burst("c")
    assert len(client.batches) == 2  # ... until the recheck time


async def test_idle_lanes_are_dropped_unless_they_remember_no_batches() -> None:
    """A lane lives while requests are out or messages wait; then it goes (participants come
    and go), except one that must remember, until its recheck, that batches are refused."""
    now = [1000.0]
    client = FakeClient()
    b = Phase2Batcher(client, max_batch=8, max_inflight=1, clock=lambda: now[0])
    tasks = [asyncio.create_task(b.call(URL, "commit", f"t{i}", "p", 5.0)) for i in range(3)]
    await settle()
    assert list(b._lanes) == [(URL, "p")]
    client.release.set()
    await asyncio.gather(*tasks)
    assert b._lanes == {} and client.batches == [[("commit", "t1"), ("commit", "t2")]]
    # The next burst batches again on a new lane.
    client.release.clear()
    tasks = [asyncio.create_task(b.call(URL, "commit", f"u{i}", "p", 5.0)) for i in range(3)]
    await settle()
    client.release.set()
    await asyncio.gather(*tasks)
    assert client.batches[-1] == [("commit", "u1"), ("commit", "u2")] and b._lanes == {}
    # A participant without the batch endpoint: its lane stays until the recheck time.
    client.batch_supported = False
    client.release.clear()
    tasks = [asyncio.create_task(b.call(URL, "commit", f"v{i}", "q", 5.0)) for i in range(3)]
    await settle()
    client.release.set()
    await asyncio.gather(*tasks)
    assert list(b._lanes) == [(URL, "q")]
    now[0] += UNSUPPORTED_RECHECK_S + 1
    client.batch_supported = True
    await b.call(URL, "commit", "w0", "q", 5.0)
    assert b._lanes == {}


async def test_lanes_of_gone_participants_without_batches_make_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lane that remembers "no batch endpoint" stays until a message passes it after the
    recheck time; if its participant never comes back, the lanes it holds are dropped once
    the lane limit is reached, so new participants still get batches."""
    monkeypatch.setattr(phase2_batch, "MAX_LANES", 2)
    now = [1000.0]
    client = FakeClient(batch_supported=False)
    b = Phase2Batcher(client, max_batch=8, max_inflight=1, clock=lambda: now[0])

    async def burst(participant: str) -> None:
        client.release.clear()
        tasks = [
            asyncio.create_task(b.call(URL, "commit", f"{participant}{i}", participant, 5.0))
            for i in range(3)
        ]
        await settle()
        client.release.set()
        await asyncio.gather(*tasks)

    await burst("p")
    await burst("q")
    assert sorted(b._lanes) == [(URL, "p"), (URL, "q")]  # both remember: no batches
    client.batch_supported = True
    await burst("r")  # the limit is reached and both still remember: r's messages go alone
    assert [m for batch in client.batches for _, m in batch if m.startswith("r")] == []
    now[0] += UNSUPPORTED_RECHECK_S + 1
    await burst("r")  # p and q are past their recheck: dropped, r gets a lane and batches
    assert client.batches[-1] == [("commit", "r1"), ("commit", "r2")]
    assert b._lanes == {}


async def test_a_failing_batch_answers_every_message_and_the_lane_goes_on() -> None:
    client = FakeClient()
    client.batch_error = RuntimeError("bug in the client")
    b = Phase2Batcher(client, max_batch=8, max_inflight=1)
    tasks = [asyncio.create_task(b.call(URL, "commit", f"t{i}", "p", 5.0)) for i in range(3)]
    await settle()
    client.release.set()
    replies = await asyncio.gather(*tasks)
    assert replies[0].status == 200
    for r in replies[1:]:
        assert r.status is None and r.error is not None and "bug in the client" in r.error
    client.batch_error = None
    assert (await b.call(URL, "commit", "t9", "p", 5.0)).status == 200


async def test_stop_answers_waiting_messages() -> None:
    """Queued messages and batches in flight get "not sent" (phase 2 repeats them under the
    next leader). A message sent alone is its caller's task's own (the engine cancels those
    callers itself)."""
    client = FakeClient()
    client.batch_release = asyncio.Event()  # batches never get an answer here
    b = Phase2Batcher(client, max_batch=2, max_inflight=1)
    first = asyncio.create_task(b.call(URL, "abort", "t0", "p", 5.0))
    await settle()
    tasks = [asyncio.create_task(b.call(URL, "abort", f"t{i}", "p", 5.0)) for i in range(1, 5)]
    await settle()
    client.release.set()
    assert (await first).status == 200
    await settle()
    # t0 went alone and was answered; t1+t2 are a batch in flight, t3+t4 wait.
    assert client.batches == [[("abort", "t1"), ("abort", "t2")]]
    await b.stop()
    replies = await asyncio.wait_for(asyncio.gather(*tasks), 2.0)
    assert all(r.status is None and r.error and "not sent" in r.error for r in replies)
    # After stop nothing is queued: a late message goes alone.
    assert (await b.call(URL, "commit", "t9", "p", 5.0)).status == 200
    assert len(client.batches) == 1


async def test_stop_answers_a_batch_whose_sender_never_started() -> None:
    client = FakeClient()
    b = Phase2Batcher(client, max_batch=8, max_inflight=1)
    first = asyncio.create_task(b.call(URL, "commit", "t0", "p", 5.0))
    await settle()
    rest = [asyncio.create_task(b.call(URL, "commit", f"t{i}", "p", 5.0)) for i in (1, 2)]
    await settle()
    # What the end of t0's request does (free its slot, start the next batch's task), and
    # stop in the same step, before that task ever runs.
    lane = b._lanes[(URL, "p")]
    lane.inflight -= 1
    b._pump(lane)
    await b.stop()
    replies = await asyncio.wait_for(asyncio.gather(*rest), 2.0)
    assert all(r.status is None for r in replies) and client.batches == []
    lane.inflight += 1  # t0's slot again, which its own end gives back
    client.release.set()
    assert (await first).status == 200 and lane.inflight == 0


async def test_each_request_runs_in_its_callers_context() -> None:
    """A message sent alone, or one by one after a batch was refused, keeps its caller's
    context (trace and log fields); a batch has none of any one caller's."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="-")
    seen: list[tuple[str, str]] = []

    class Recording(FakeClient):
        async def call(self, base_url, action, txid, participant, timeout_s):  # type: ignore[no-untyped-def]
            seen.append((txid, var.get()))
            return await super().call(base_url, action, txid, participant, timeout_s)

        async def call_batch(self, base_url, participant, messages, timeout_s):  # type: ignore[no-untyped-def]
            seen.append(("batch", var.get()))
            return await super().call_batch(base_url, participant, messages, timeout_s)

    client = Recording(batch_supported=False)
    b = Phase2Batcher(client, max_batch=8, max_inflight=1)

    async def caller(txid: str) -> Reply:
        var.set(f"ctx-{txid}")
        return await b.call(URL, "commit", txid, "p", 5.0)

    tasks = [asyncio.create_task(caller(f"t{i}")) for i in range(3)]
    await settle()
    client.release.set()
    await asyncio.gather(*tasks)
    assert sorted(seen) == [
        ("batch", "-"),
        ("t0", "ctx-t0"),
        ("t1", "ctx-t1"),
        ("t2", "ctx-t2"),
    ]


async def test_a_caller_that_gives_up_does_not_cancel_the_others() -> None:
    client = FakeClient()
    b = Phase2Batcher(client, max_batch=8, max_inflight=1)
    tasks = [asyncio.create_task(b.call(URL, "commit", f"t{i}", "p", 5.0)) for i in range(4)]
    await settle()
    tasks[2].cancel()
    client.release.set()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[2], asyncio.CancelledError)
    assert [r.status for i, r in enumerate(done) if i != 2] == [200, 200, 200]  # type: ignore[union-attr]


@pytest.mark.parametrize("max_batch,max_inflight", [(0, 1), (257, 1), (8, 0)])
def test_bounds_are_checked(max_batch: int, max_inflight: int) -> None:
    with pytest.raises(AssertionError):
        Phase2Batcher(FakeClient(), max_batch=max_batch, max_inflight=max_inflight)
