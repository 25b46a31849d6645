"""Phase-2 results of many transactions share log entries.

Why: every transaction ends with one proposal of its participants' acknowledgements (or of
the failed attempts), and each proposal is a log entry of its own: a Raft entry, a log row
on every node, a frame to every follower. Under load many such proposals are ready at the
same moment. Here a proposal goes at once while fewer than `max_inflight` are waiting for
the log; otherwise it waits for the next one, which carries every waiting proposal's
commands in one entry (up to `max_commands`). No timer: a lone proposal is never held back
(the same shape as the phase-2 batches, coordinator/phase2_batch.py).

Only for commands that stand alone (an `Ack` or a `Phase2Attempt` is applied to its own
transaction whatever else the entry holds); a proposal whose commands must stay together
(a Carried begin with its decision) still goes through `CommandLog.propose` itself, and a
coalesced entry keeps each proposal's commands together and in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.commands import Command
from coordinator.log import CommandLog
from coordinator.statemachine import Result

log = logging.getLogger("txc.proposal_batch")

MAX_WAITING = 4096  # proposals waiting; past this one goes alone (phase 2 bounds them anyway)


@dataclass
class _Proposal:
    commands: list[Command]
    results: asyncio.Future[list[Result]]


def _retrieve(f: asyncio.Future[list[Result]]) -> None:
    if not f.cancelled():
        f.exception()


class ProposalCoalescer:
    def __init__(self, log_: CommandLog, *, max_inflight: int, max_commands: int) -> None:
        assert max_inflight >= 1 and max_commands >= 1
        self.log = log_
        self.max_inflight = max_inflight
        self.max_commands = max_commands
        self._queue: deque[_Proposal] = deque()
        self._inflight = 0
        self._senders: dict[asyncio.Task[None], list[_Proposal]] = {}
        self._stopped = False
        self.entries_saved = 0  # proposals that rode in another's entry (tests, /metrics)

    async def propose(self, commands: Sequence[Command]) -> list[Result]:
        """`CommandLog.propose(commands)`, maybe in one entry with other proposals: the same
        results, or the same exception (NotLeader, LogUnavailable)."""
        cmds = list(commands)
        if not cmds:
            return []
        if (
            self._stopped
            or len(cmds) >= self.max_commands
            or len(self._queue) >= MAX_WAITING
            or (self._inflight < self.max_inflight and not self._queue)
        ):
            self._inflight += 1
            try:
                return await self.log.propose(cmds)
            finally:
                self._done()
        p = _Proposal(cmds, asyncio.get_running_loop().create_future())
        # Read by its caller, unless that one gave up: then nobody would (and asyncio would
        # log "exception never retrieved").
        p.results.add_done_callback(_retrieve)
        self._queue.append(p)
        self._pump()
        # Shielded: one caller giving up must not cancel an entry that others share.
        return await asyncio.shield(p.results)

    def _done(self) -> None:
        self._inflight -= 1
        assert self._inflight >= 0
        self._pump()

    def _pump(self) -> None:
        while not self._stopped and self._queue and self._inflight < self.max_inflight:
            group = [self._queue.popleft()]
            size = len(group[0].commands)
            while self._queue and size + len(self._queue[0].commands) <= self.max_commands:
                p = self._queue.popleft()
                group.append(p)
                size += len(p.commands)
            self._inflight += 1
            task = asyncio.create_task(
                self._send(group), name="txc-coalesced-proposal", context=contextvars.Context()
            )
            self._senders[task] = group
            task.add_done_callback(self._sender_done)

    def _sender_done(self, task: asyncio.Task[None]) -> None:
        for p in self._senders.pop(task, []):
            if not p.results.done():  # cancelled before it ran
                p.results.set_exception(asyncio.CancelledError())
        self._done()

    async def _send(self, group: list[_Proposal]) -> None:
        try:
            results = await self.log.propose([c for p in group for c in p.commands])
        except BaseException as e:
            for p in group:
                if not p.results.done():
                    p.results.set_exception(e)
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        assert len(results) == sum(len(p.commands) for p in group)
        self.entries_saved += len(group) - 1
        at = 0
        for p in group:
            n = len(p.commands)
            if not p.results.done():
                p.results.set_result(results[at : at + n])
            at += n

    async def stop(self) -> None:
        self._stopped = True
        while self._queue:
            p = self._queue.popleft()
            if not p.results.done():
                p.results.set_exception(asyncio.CancelledError())
        senders = list(self._senders)
        for task in senders:
            task.cancel()
        for task in senders:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
