"""Simulated durable storage for one node: writes are lost on a crash until synced.

The simulated shell writes a Ready in contract order (snapshot, entries, hard state) and
then syncs. A crash before the sync keeps only a prefix of those writes (the disk may have
flushed some of them), which is exactly what a real crash between writes can leave behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator.raft.messages import Entry, HardState, Snapshot
from coordinator.raft.ready import PersistentState, Ready


@dataclass
class SimStore:
    snapshot: Snapshot
    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)

    def write(self, rd: Ready, durable_ops: int = 3) -> None:
        """Make the first `durable_ops` of the Ready's three writes durable (3 = all: a sync)."""
        if durable_ops >= 1 and rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.entries = []
        if durable_ops >= 2 and rd.entries:
            first = rd.entries[0].index
            keep = first - self.snapshot.meta.index - 1
            assert 0 <= keep <= len(self.entries), (first, self.snapshot.meta.index)
            del self.entries[keep:]
            self.entries.extend(rd.entries)
            # The kept prefix was contiguous already: check what was written (the whole log
            # at every write was a few % of a simulation's time).
            base = self.snapshot.meta.index
            for k in range(keep, len(self.entries)):
                assert self.entries[k].index == base + 1 + k, (self.entries[k].index, base, k)
        if durable_ops >= 3 and rd.hard_state is not None:
            self.hard_state = rd.hard_state

    def save_snapshot(self, snap: Snapshot) -> None:
        """The shell's own compaction: the snapshot and the log prefix drop, atomically."""
        assert snap.meta.index >= self.snapshot.meta.index
        drop = snap.meta.index - self.snapshot.meta.index
        self.entries = self.entries[drop:]
        self.snapshot = snap
        self.check()

    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.snapshot.meta.index

    def restore(self) -> PersistentState:
        return PersistentState(
            self.hard_state, self.snapshot, tuple(self.entries), self.snapshot.meta.index
        )

    def check(self) -> None:
        base = self.snapshot.meta.index
        for k, e in enumerate(self.entries):
            assert e.index == base + 1 + k, (e.index, base, k)
