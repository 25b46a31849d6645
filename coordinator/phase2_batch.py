"""Phase-2 batching: the commit and abort messages bound for one participant travel together.

Why: under load, phase 2 has many transactions for the same participant at once, and each
message sent on its own costs both sides a whole HTTP request (the participant also a
signature check, a worker-thread hand-off and a database transaction to decide it). Here
each participant gets a lane: a message is sent at once while fewer than `max_inflight`
requests are out to that participant, and otherwise waits for the next request, which takes
up to `max_batch` waiting messages as one `POST {url}/batch`. No timer: an idle participant
gets every message at once, alone; batches form only when requests are already in flight
(the same shape as the log's group commit).

Nothing changes for the rules: each message still gets its own Reply, which the engine
interprets exactly as a single request's answer, and a message is repeated the same way
when it failed. A participant without the batch endpoint (an SDK of an earlier release, or
another implementation of DESIGN §5) answers 404 and is sent messages one by one from then
on, asked again after `UNSUPPORTED_RECHECK_S`; so does one that answers the batch in any
other way than as a whole (see `ParticipantClient.call_batch`).

A message sent alone goes from its caller's own task (its trace and log context stay its
own); a batch goes from a task with an empty context (it belongs to no one transaction),
and when a batch falls back to one message per request, each request runs in the context
of the message's caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from coordinator.participant_client import (
    BATCH_ACTIONS,
    MAX_BATCH_MESSAGES,
    ProtocolCaller,
    Reply,
)

log = logging.getLogger("txc.phase2_batch")

# A participant that has no batch endpoint is asked again after this long (it may have been
# upgraded meanwhile).
UNSUPPORTED_RECHECK_S = 300.0
MAX_QUEUED_PER_LANE = 4096  # past this a message goes on its own (the engine bounds phase 2)
# Lanes with requests out or messages waiting (an idle lane is dropped, unless it remembers a
# participant without the batch endpoint); past this many, messages go on their own.
MAX_LANES = 10_000
# A participant handles a batch's messages one after another: a batch may take the request
# timeout plus this much per message (its slow paths wait for locks) before it counts as lost.
BATCH_TIMEOUT_PER_MESSAGE_S = 0.25


class BatchCaller(ProtocolCaller, Protocol):
    async def call_batch(
        self,
        base_url: str,
        participant: str,
        messages: list[tuple[str, str]],
        timeout_s: float,
    ) -> list[Reply] | None: ...


@dataclass
class _Message:
    action: str
    txid: str
    timeout_s: float
    reply: asyncio.Future[Reply]
    context: contextvars.Context  # its caller's (trace, txid for the logs)


@dataclass
class _Lane:
    """The messages waiting for one participant and the requests out to it."""

    base_url: str
    participant: str
    queue: deque[_Message] = field(default_factory=deque)
    inflight: int = 0
    unsupported_until: float = 0.0

    def idle(self, now: float) -> bool:
        """Nothing out, nothing waiting, nothing to remember: the lane may be dropped."""
        return self.inflight == 0 and not self.queue and self.unsupported_until <= now


def _not_sent(m: _Message) -> None:
    if not m.reply.done():
        m.reply.set_result(Reply(None, error=f"{m.action}: not sent (stopping)"))


class Phase2Batcher:
    """A ProtocolCaller that sends commit and abort messages in batches (see the module's
    docstring); prepare, and everything when `max_batch` is 1, goes straight through."""

    def __init__(
        self,
        client: BatchCaller,
        *,
        max_batch: int,
        max_inflight: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert 1 <= max_batch <= MAX_BATCH_MESSAGES
        assert max_inflight >= 1
        self.client = client
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.clock = clock
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._senders: dict[asyncio.Task[None], list[_Message]] = {}
        self._stopped = False
        self.batches_sent = 0  # requests to /batch (for tests and the benchmark's report)
        self.messages_batched = 0

    async def call(
        self, base_url: str, action: str, txid: str, participant: str, timeout_s: float
    ) -> Reply:
        batchable = action in BATCH_ACTIONS and not self._stopped
        lane = self._lane(base_url, participant) if batchable else None
        if (
            lane is None
            or len(lane.queue) >= MAX_QUEUED_PER_LANE
            or lane.unsupported_until > self.clock()
        ):
            return await self.client.call(base_url, action, txid, participant, timeout_s)
        if lane.inflight < self.max_inflight and not lane.queue:
            # A free slot: this message goes now, alone, from its caller's task.
            lane.inflight += 1
            try:
                return await self.client.call(base_url, action, txid, participant, timeout_s)
            finally:
                self._done(lane)
        loop = asyncio.get_running_loop()
        message = _Message(
            action, txid, timeout_s, loop.create_future(), contextvars.copy_context()
        )
        lane.queue.append(message)
        self._pump(lane)
        # Shielded: a caller that gives up (e.g. the engine stopping) must not cancel the
        # answer of a batch others share; the sender resolves it either way.
        return await asyncio.shield(message.reply)

    def _lane(self, base_url: str, participant: str) -> _Lane | None:
        if self.max_batch <= 1:
            return None
        key = (base_url, participant)
        lane = self._lanes.get(key)
        if lane is None:
            if len(self._lanes) >= MAX_LANES:
                self._drop_idle_lanes()
                if len(self._lanes) >= MAX_LANES:
                    return None
            lane = self._lanes[key] = _Lane(base_url, participant)
        return lane

    def _drop_idle_lanes(self) -> None:
        """Drop the lanes that only remember a participant without the batch endpoint whose
        recheck time has passed (no message came by to drop them: the participant is gone)."""
        now = self.clock()
        for key, lane in list(self._lanes.items()):
            if lane.idle(now):
                del self._lanes[key]

    def _done(self, lane: _Lane) -> None:
        """A request to `lane` ended: the next one takes what waits; an idle lane is dropped
        (so that participants long gone do not hold lanes), unless it still remembers that
        its participant takes no batches. Nothing refers to a lane with nothing out and
        nothing waiting, so the next message simply makes a new one."""
        lane.inflight -= 1
        assert lane.inflight >= 0
        self._pump(lane)
        if lane.idle(self.clock()):
            key = (lane.base_url, lane.participant)
            if self._lanes.get(key) is lane:
                del self._lanes[key]

    def _pump(self, lane: _Lane) -> None:
        while not self._stopped and lane.queue and lane.inflight < self.max_inflight:
            n = min(self.max_batch, len(lane.queue))
            batch = [lane.queue.popleft() for _ in range(n)]
            lane.inflight += 1
            task = asyncio.create_task(
                self._send(lane, batch), name="txc-phase2-batch", context=contextvars.Context()
            )
            self._senders[task] = batch
            # A done callback, not the task's own `finally`: it runs also for a task that
            # was cancelled before it started.
            task.add_done_callback(functools.partial(self._sender_done, lane=lane))

    def _sender_done(self, task: asyncio.Task[None], *, lane: _Lane) -> None:
        self._senders.pop(task, None)
        self._done(lane)

    async def _send(self, lane: _Lane, batch: list[_Message]) -> None:
        try:
            replies = await self._replies(lane, batch)
            for m, r in zip(batch, replies, strict=True):
                if not m.reply.done():
                    m.reply.set_result(r)
        except asyncio.CancelledError:
            for m in batch:
                _not_sent(m)
            raise
        except Exception as e:  # a bug here must not leave phase 2 waiting for ever
            log.exception("phase-2 batch to %s failed", lane.participant)
            for m in batch:
                if not m.reply.done():
                    m.reply.set_result(Reply(None, error=f"{m.action}: {type(e).__name__}: {e}"))

    async def _replies(self, lane: _Lane, batch: list[_Message]) -> list[Reply]:
        if len(batch) > 1 and lane.unsupported_until <= self.clock():
            timeout_s = max(m.timeout_s for m in batch) + BATCH_TIMEOUT_PER_MESSAGE_S * len(batch)
            replies = await self.client.call_batch(
                lane.base_url, lane.participant, [(m.action, m.txid) for m in batch], timeout_s
            )
            if replies is not None:
                assert len(replies) == len(batch)
                self.batches_sent += 1
                self.messages_batched += len(batch)
                return replies
            log.info(
                "%s did not take a batch: phase 2 sends it one message per request "
                "for the next %.0f s",
                lane.participant,
                UNSUPPORTED_RECHECK_S,
            )
            lane.unsupported_until = self.clock() + UNSUPPORTED_RECHECK_S
        loop = asyncio.get_running_loop()
        calls = [
            loop.create_task(
                self.client.call(lane.base_url, m.action, m.txid, lane.participant, m.timeout_s),
                context=m.context,
            )
            for m in batch
        ]
        try:
            return list(await asyncio.gather(*calls))
        except asyncio.CancelledError:
            for c in calls:
                c.cancel()
            raise

    async def stop(self) -> None:
        """Answer every waiting message "not sent" and cancel the requests in flight (their
        messages get the same answer, also a batch cancelled before it started); phase 2
        repeats them under the next leader."""
        self._stopped = True
        for lane in self._lanes.values():
            while lane.queue:
                _not_sent(lane.queue.popleft())
        senders = dict(self._senders)
        for task in senders:
            task.cancel()
        for task, batch in senders.items():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            for m in batch:
                _not_sent(m)
