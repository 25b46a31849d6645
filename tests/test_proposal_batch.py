"""ProposalCoalescer: the proposals of one event-loop turn share an entry; each caller gets
exactly its own commands' results, or the log's exception; nothing waits for the log."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from coordinator.commands import Ack, Command
from coordinator.log import NotLeader
from coordinator.proposal_batch import ProposalCoalescer
from coordinator.statemachine import Result, Status


class FakeLog:
    """Each propose is one entry; it waits for `release`, then answers one Result per
    command whose message names the command (txid/name)."""

    def __init__(self) -> None:
        self.entries: list[list[str]] = []
        self.release = asyncio.Event()
        self.error: Exception | None = None

    async def propose(self, commands: Sequence[Command]) -> list[Result]:
        names = [f"{c.txid}/{getattr(c, 'name', '')}" for c in commands]
        self.entries.append(names)
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return [Result(Status.OK, None, message=n) for n in names]


def acks(txid: str, *names: str) -> list[Command]:
    return [Ack(txid=txid, at=0.0, name=n) for n in names]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def coalescer(fake: FakeLog, max_commands: int = 64) -> ProposalCoalescer:
    return ProposalCoalescer(fake, max_commands=max_commands)  # type: ignore[arg-type]


async def test_proposals_of_one_turn_share_an_entry() -> None:
    fake = FakeLog()
    c = coalescer(fake, max_commands=5)
    # Five proposals made in the same turn (2 commands each).
    tasks = [asyncio.create_task(c.propose(acks(f"t{i}", "a", "b"))) for i in range(5)]
    await settle()
    # As many whole proposals per entry as fit in max_commands, in order; none waited for
    # another entry to commit (all are out before any answer).
    assert fake.entries == [
        ["t0/a", "t0/b", "t1/a", "t1/b"],
        ["t2/a", "t2/b", "t3/a", "t3/b"],
        ["t4/a", "t4/b"],
    ]
    fake.release.set()
    results = await asyncio.gather(*tasks)
    for i, rs in enumerate(results):
        assert [r.message for r in rs] == [f"t{i}/a", f"t{i}/b"]
    assert c.entries_saved == 2


async def test_a_lone_proposal_is_not_held_back() -> None:
    fake = FakeLog()
    fake.release.set()
    c = coalescer(fake)
    first = await c.propose(acks("t0", "a"))
    second = await c.propose(acks("t1", "a"))
    assert [r.message for r in first + second] == ["t0/a", "t1/a"]
    assert fake.entries == [["t0/a"], ["t1/a"]] and c.entries_saved == 0


async def test_proposals_of_a_later_turn_do_not_wait_for_the_first_entry() -> None:
    fake = FakeLog()
    c = coalescer(fake)
    first = asyncio.create_task(c.propose(acks("t0", "a")))
    await settle()
    later = asyncio.create_task(c.propose(acks("t1", "a")))
    await settle()
    assert fake.entries == [["t0/a"], ["t1/a"]]  # both out, t0's not answered yet
    fake.release.set()
    await asyncio.gather(first, later)


async def test_the_log_s_exception_reaches_every_caller_of_the_entry() -> None:
    fake = FakeLog()
    c = coalescer(fake)
    tasks = [asyncio.create_task(c.propose(acks(f"t{i}", "a"))) for i in range(3)]
    await settle()
    fake.error = NotLeader("http://other")
    fake.release.set()
    for t in tasks:
        with pytest.raises(NotLeader):
            await t
    fake.error = None
    assert [r.message for r in await c.propose(acks("t9", "a"))] == ["t9/a"]


async def test_a_caller_that_gives_up_does_not_cancel_the_shared_entry() -> None:
    fake = FakeLog()
    c = coalescer(fake)
    tasks = [asyncio.create_task(c.propose(acks(f"t{i}", "a"))) for i in range(3)]
    await settle()
    tasks[1].cancel()
    fake.release.set()
    assert [r.message for r in await tasks[0]] == ["t0/a"]
    assert [r.message for r in await tasks[2]] == ["t2/a"]
    with pytest.raises(asyncio.CancelledError):
        await tasks[1]
    assert fake.entries == [["t0/a", "t1/a", "t2/a"]]  # t1's commands still went


async def test_large_proposals_go_alone_and_stop_fails_what_has_not_gone() -> None:
    fake = FakeLog()
    c = coalescer(fake, max_commands=3)
    big = asyncio.create_task(c.propose(acks("big", "a", "b", "c")))  # >= max: alone, now
    await settle()
    assert fake.entries == [["big/a", "big/b", "big/c"]]
    waiting = asyncio.create_task(c.propose(acks("t1", "a")))
    await asyncio.sleep(0)  # queued; its turn has not ended
    await c.stop()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    fake.release.set()
    await big
    assert [r.message for r in await c.propose(acks("t2", "a"))] == ["t2/a"]  # alone now
