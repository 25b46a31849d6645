"""Phase-2 results of many transactions share log entries.

Why: every transaction ends with one proposal of its participants' acknowledgements (or of
the failed attempts), and each proposal is a log entry of its own: a Raft entry, a log row
on every node, a frame's worth of encoding to every follower, one apply. Under load many
such proposals are made at the same moment (a participant's batch answer wakes all its
transactions' phase-2 rounds together). Here the proposals made in one turn of the event
loop go to the log as one entry (up to `max_commands`), at the end of that turn.

No timer and no waiting for the log: a proposal is held back only until the current turn
of the event loop ends, so it never waits for another Raft round. (Waiting for earlier
proposals to commit, tried first, merged more but added Raft rounds at low concurrency:
-9% transfers/s at 8 clients.)

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
    def __init__(self, log_: CommandLog, *, max_commands: int) -> None:
        assert max_commands >= 1
        self.log = log_
        self.max_commands = max_commands
        self._queue: deque[_Proposal] = deque()
        self._flush_scheduled = False
        self._senders: dict[asyncio.Task[None], list[_Proposal]] = {}
        self._stopped = False
        self.entries_saved = 0  # proposals that rode in another's entry (tests, /metrics)

    async def propose(self, commands: Sequence[Command]) -> list[Result]:
        """`CommandLog.propose(commands)`, maybe in one entry with other proposals of the
        same event-loop turn: the same results, or the same exception (NotLeader,
        LogUnavailable)."""
        cmds = list(commands)
        if not cmds:
            return []
        if self._stopped or len(cmds) >= self.max_commands or len(self._queue) >= MAX_WAITING:
            return await self.log.propose(cmds)
        p = _Proposal(cmds, asyncio.get_running_loop().create_future())
        # Read by its caller, unless that one gave up: then nobody would (and asyncio would
        # log "exception never retrieved").
        p.results.add_done_callback(_retrieve)
        self._queue.append(p)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        # Shielded: one caller giving up must not cancel an entry that others share.
        return await asyncio.shield(p.results)

    def _flush(self) -> None:
        """End of the turn: everything proposed meanwhile goes, in as few entries as fit."""
        self._flush_scheduled = False
        while not self._stopped and self._queue:
            group = [self._queue.popleft()]
            size = len(group[0].commands)
            while self._queue and size + len(self._queue[0].commands) <= self.max_commands:
                p = self._queue.popleft()
                group.append(p)
                size += len(p.commands)
            task = asyncio.create_task(
                self._send(group), name="txc-coalesced-proposal", context=contextvars.Context()
            )
            self._senders[task] = group
            task.add_done_callback(self._sender_done)

    def _sender_done(self, task: asyncio.Task[None]) -> None:
        for p in self._senders.pop(task, []):
            if not p.results.done():  # cancelled before it ran
                p.results.set_exception(asyncio.CancelledError())

    async def _send(self, group: list[_Proposal]) -> None:
        try:
            results = await self.log.propose([c for p in group for c in p.commands])
            if len(results) != sum(len(p.commands) for p in group):
                raise RuntimeError(f"the log answered {len(results)} results for the entry")
        except Exception as e:  # NotLeader, LogUnavailable, ...: every caller's
            for p in group:
                if not p.results.done():
                    p.results.set_exception(e)
            return
        except BaseException:  # cancelled (stop) or the process is going down
            for p in group:
                if not p.results.done():
                    p.results.set_exception(asyncio.CancelledError())
            raise
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
