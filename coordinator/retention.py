"""Retention: what the replicated state forgets, and when (docs/retention.md).

A finished transaction (decided, every participant acknowledged, no heuristic waiting for an
operator) is forgotten `retention_s` after it finished: the leader proposes `Forget` for it,
and every node, at the same log index, replaces its record by a tombstone that keeps the
decision (coordinator/statemachine.py). A tombstone answers every command as the full record
would have (a repeated commit gets the outcome, a late enlistment is refused, a Begin with the
same idempotency key finds it, `/outcome` reports the decision), so forgetting changes no
answer. Tombstones live `tombstone_retention_s` and are then purged by `PurgeTombstones`,
which moves a horizon; only after that is the txid unknown (presumed abort).

So the replicated state holds what is in flight, what finished in the last `retention_s`,
and one small tombstone per transaction of the last `tombstone_retention_s`: its size, the
snapshots and the memory of a node follow the load, not the history. The full records go to
each node's own history table (coordinator/history.py).

This module is the leader's side: a task that proposes those commands. The decisions it
takes (which records, which horizon) are checked again when applied, so a stale leader or a
skewed clock can make it propose too little or too early, never forget an unfinished record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from coordinator.commands import Command, Forget, PurgeTombstones
from coordinator.log import CommandLog, LogUnavailable, NotLeader
from coordinator.periodic import Periodic
from coordinator.store import Store

log = logging.getLogger("txc.retention")

# A client's retried commit must find the decision: a tombstone lives at least this long.
MIN_TOMBSTONE_RETENTION_S = 30.0
RETENTION_INTERVAL_S = 1.0  # how often the leader looks for records to forget
MAX_FORGET_PER_PROPOSAL = 256  # Forget commands in one log entry (~20 KB)
MAX_PROPOSALS_PER_PASS = 8  # so that a backlog (e.g. after a long outage) drains in steps
# A purge is proposed once a tombstone is due and the horizon lags by this share of the
# retention (at most PURGE_MAX_STEP_S): at most one small entry every 36 s at the defaults,
# none while no tombstone is due.
PURGE_STEP_SHARE = 0.01
PURGE_MAX_STEP_S = 300.0


def purge_before(
    horizon: float, oldest: float | None, now: float, tombstone_retention_s: float
) -> PurgeTombstones | None:
    """The purge to propose now, if one is due: tombstones forgotten before
    `now - tombstone_retention_s` go. `oldest` is when the oldest unpurged tombstone was
    forgotten (None: there is none), so an idle group proposes nothing."""
    due = now - tombstone_retention_s
    step = min(PURGE_MAX_STEP_S, tombstone_retention_s * PURGE_STEP_SHARE)
    if oldest is None or oldest >= due or due - horizon < step:
        return None
    return PurgeTombstones(txid="", at=now, before=due)


class Retention(Periodic):
    """The leader's retention task. On a follower it only waits."""

    name = "txc-retention"
    log = log

    def __init__(
        self,
        log_: CommandLog,
        store: Store,
        *,
        retention_s: float,
        tombstone_retention_s: float,
        clock: Callable[[], float] = time.time,
        interval_s: float = RETENTION_INTERVAL_S,
    ) -> None:
        assert retention_s > 0 and tombstone_retention_s >= MIN_TOMBSTONE_RETENTION_S
        super().__init__(interval_s)
        self.command_log = log_
        self.store = store
        self.retention_s = retention_s
        self.tombstone_retention_s = tombstone_retention_s
        self.clock = clock
        self.forgotten = 0  # records this node forgot as leader (status, tests)
        self.purges = 0

    def due(self) -> bool:
        return self.command_log.is_leader()

    def failed(self, e: Exception) -> None:
        if isinstance(e, NotLeader | LogUnavailable):  # leadership moved: the new leader goes on
            log.debug("retention pass skipped: %s", e)
        else:
            super().failed(e)

    async def run_once(self) -> int:
        """One pass: forget what is due (in bounded proposals), then purge tombstones if due.
        Returns how many records were forgotten."""
        forgotten = 0
        for _ in range(MAX_PROPOSALS_PER_PASS):
            now = self.clock()
            txids = await self.store.forgettable(now - self.retention_s, MAX_FORGET_PER_PROPOSAL)
            if not txids:
                break
            cmds: list[Command] = [Forget(txid=t, at=now) for t in txids]
            results = await self.command_log.propose(cmds)
            n = sum(1 for r in results if r.changed)
            forgotten += n
            if n == 0 or len(txids) < MAX_FORGET_PER_PROPOSAL:
                break  # nothing more (what the database showed was already forgotten)
        self.forgotten += forgotten
        purge = purge_before(
            self.store.tombstone_horizon,
            await self.store.oldest_tombstone(),
            self.clock(),
            self.tombstone_retention_s,
        )
        if purge is not None:
            await self.command_log.propose([purge])
            self.purges += 1
        return forgotten
