"""ProposalCoalescer: proposals share an entry only while others wait for the log; each
caller gets exactly its own commands' results, or the log's exception."""

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


async def test_proposals_share_an_entry_only_while_others_wait() -> None:
    fake = FakeLog()
    c = ProposalCoalescer(fake, max_inflight=1, max_commands=5)  # type: ignore[arg-type]
    tasks = [
        asyncio.create_task(c.propose(acks(f"t{i}", "a", "b"))) for i in range(5)
    ]  # 2 commands each
    await settle()
    assert fake.entries == [["t0/a", "t0/b"]]  # the first went at once, alone
    fake.release.set()
    results = await asyncio.gather(*tasks)
    # Then the waiting ones, as many whole proposals as fit in max_commands, in order.
    assert fake.entries[1:] == [
        ["t1/a", "t1/b", "t2/a", "t2/b"],
        ["t3/a", "t3/b", "t4/a", "t4/b"],
    ]
    for i, rs in enumerate(results):
        assert [r.message for r in rs] == [f"t{i}/a", f"t{i}/b"]
    assert c.entries_saved == 2


async def test_the_log_s_exception_reaches_every_caller_of_the_entry() -> None:
    fake = FakeLog()
    c = ProposalCoalescer(fake, max_inflight=1, max_commands=64)  # type: ignore[arg-type]
    first = asyncio.create_task(c.propose(acks("t0", "a")))
    await settle()
    rest = [asyncio.create_task(c.propose(acks(f"t{i}", "a"))) for i in (1, 2)]
    await settle()
    fake.error = NotLeader("http://other")
    fake.release.set()
    for t in (first, *rest):
        with pytest.raises(NotLeader):
            await t
    fake.error = None
    assert [r.message for r in await c.propose(acks("t9", "a"))] == ["t9/a"]


async def test_a_caller_that_gives_up_does_not_cancel_the_shared_entry() -> None:
    fake = FakeLog()
    c = ProposalCoalescer(fake, max_inflight=1, max_commands=64)  # type: ignore[arg-type]
    first = asyncio.create_task(c.propose(acks("t0", "a")))
    await settle()
    rest = [asyncio.create_task(c.propose(acks(f"t{i}", "a"))) for i in (1, 2, 3)]
    await settle()
    rest[1].cancel()
    fake.release.set()
    await first
    assert [r.message for r in await rest[0]] == ["t1/a"]
    assert [r.message for r in await rest[2]] == ["t3/a"]
    with pytest.raises(asyncio.CancelledError):
        await rest[1]
    assert fake.entries[1] == ["t1/a", "t2/a", "t3/a"]  # t2's commands still went


async def test_large_proposals_go_alone_and_stop_fails_the_waiting() -> None:
    fake = FakeLog()
    c = ProposalCoalescer(fake, max_inflight=1, max_commands=3)  # type: ignore[arg-type]
    first = asyncio.create_task(c.propose(acks("t0", "a")))
    await settle()
    big = asyncio.create_task(c.propose(acks("big", "a", "b", "c")))  # >= max: alone, now
    waiting = asyncio.create_task(c.propose(acks("t1", "a")))
    await settle()
    assert fake.entries == [["t0/a"], ["big/a", "big/b", "big/c"]]
    await c.stop()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    fake.release.set()
    await asyncio.gather(first, big)
    assert [r.message for r in await c.propose(acks("t2", "a"))] == ["t2/a"]  # alone now
