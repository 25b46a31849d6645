"""What the leader knows of each follower's log, and how fast it may send to it.

Modelled on etcd-io/raft's Progress: a follower is *probed* (one append at a time, backing
off on rejection until the logs match), then *replicated* to (appends pipelined up to
MAX_INFLIGHT_MSGS, `next` advanced optimistically), or is receiving a *snapshot* (nothing
else is sent until it acknowledges, or the retry timer sends it back to probing).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum


class ProgressState(StrEnum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """Last indexes of the append messages sent but not yet acknowledged, oldest first."""

    def __init__(self, capacity: int) -> None:
        assert capacity >= 1
        self.capacity = capacity
        self._q: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._q)

    def add(self, last_index: int) -> None:
        assert not self.full(), "sending beyond the in-flight bound"
        assert not self._q or last_index > self._q[-1], (last_index, self._q[-1])
        self._q.append(last_index)

    def free_le(self, index: int) -> None:
        while self._q and self._q[0] <= index:
            self._q.popleft()

    def free_first(self) -> None:
        if self._q:
            self._q.popleft()

    def full(self) -> bool:
        return len(self._q) >= self.capacity

    def reset(self) -> None:
        self._q.clear()


@dataclass
class Progress:
    match: int
    next: int
    max_inflight: int
    is_learner: bool = False
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False  # probe: an append is out, wait for its answer or a heartbeat
    pending_snapshot: int = 0  # snapshot: the index of the snapshot sent
    snapshot_ticks: int = 0
    recent_active: bool = False  # heard from since the last check-quorum round
    inflights: Inflights = field(init=False)

    def __post_init__(self) -> None:
        self.inflights = Inflights(self.max_inflight)
        self.check()

    def check(self) -> None:
        assert 0 <= self.match < self.next, (self.match, self.next)
        assert self.state is ProgressState.REPLICATE or len(self.inflights) == 0

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            # The follower probably installed the snapshot; if not, it rejects and we back off.
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.reset()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflights.reset()

    def become_snapshot(self, index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = index
        self.snapshot_ticks = 0
        self.probe_sent = False
        self.inflights.reset()

    def maybe_update(self, index: int) -> bool:
        """A successful append response for `index`; False when it tells nothing new."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """A rejection of the append after `rejected`; False when it is stale (answers an
        append we no longer have in flight), so a reordered reject cannot move us back."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def sent_entries(self, count: int, last_index: int) -> None:
        if self.state is ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.add(last_index)
        elif self.state is ProgressState.PROBE:
            if count:
                self.probe_sent = True
        else:  # pragma: no cover - nothing is sent in the snapshot state
            raise AssertionError("append sent to a follower receiving a snapshot")

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True
