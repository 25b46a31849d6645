"""The node's log in memory: a snapshot base, the entries after it, and three cursors.

The core keeps every retained entry in memory (the shell compacts, so this stays bounded)
and tracks which of them the shell has made durable (`stable_last`), which are known
committed (`commit`) and which the shell has applied (`applied`). Ready hands out entries
beyond `stable_last` to persist and entries in (applied, commit] to apply.

Invariants (asserted in `check`): snapshot index <= applied <= commit <= last index, and
commit >= snapshot index; entries are contiguous after the snapshot.
"""

from __future__ import annotations

import itertools

from coordinator.raft.membership import apply_change
from coordinator.raft.messages import ConfState, Entry, EntryKind, Snapshot, SnapshotMeta


class RaftLog:
    def __init__(self, snapshot: Snapshot, entries: list[Entry], commit: int, applied: int) -> None:
        self.snapshot = snapshot
        self.entries: list[Entry] = []
        # Indexes of conf-change entries in `entries`, ascending: membership is a fold of them.
        self.conf_indexes: list[int] = []
        self.conf_version = 0  # bumped whenever conf_indexes or the snapshot's conf change
        self.commit = snapshot.meta.index
        self.applied = snapshot.meta.index
        self.stable_last = snapshot.meta.index
        # A snapshot received from the leader that the shell has not persisted yet.
        self.pending_snapshot: Snapshot | None = None
        entries = [e for e in entries if e.index > snapshot.meta.index]
        if entries:
            self._truncate_and_append(entries)
        self.stable_last = self.last_index()
        self.commit = max(commit, self.snapshot.meta.index)
        self.applied = min(max(applied, self.snapshot.meta.index), self.commit)
        self.check()

    # -- reading -----------------------------------------------------------------------

    @property
    def snap_index(self) -> int:
        return self.snapshot.meta.index

    @property
    def snap_term(self) -> int:
        return self.snapshot.meta.term

    def first_index(self) -> int:
        return self.snap_index + 1

    def last_index(self) -> int:
        return self.snap_index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snap_term

    def term(self, index: int) -> int | None:
        """The entry's term; None when compacted away or beyond the log."""
        if index == self.snap_index:
            return self.snap_term
        if self.snap_index < index <= self.last_index():
            return self.entries[index - self.snap_index - 1].term
        return None

    def entry(self, index: int) -> Entry:
        assert self.snap_index < index <= self.last_index(), (index, self.snap_index)
        return self.entries[index - self.snap_index - 1]

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """The election restriction (§5.4.1): vote only for a log at least as complete."""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    def slice(
        self, lo: int, hi: int, max_bytes: int | None = None, max_count: int | None = None
    ) -> list[Entry]:
        """Entries [lo, hi), at least one when any, then as many as fit the bounds."""
        assert self.snap_index < lo <= hi <= self.last_index() + 1, (lo, hi, self.snap_index)
        out: list[Entry] = []
        size = 0
        for i in range(lo, hi):
            e = self.entries[i - self.snap_index - 1]
            size += e.size()
            if out and (
                (max_bytes is not None and size > max_bytes)
                or (max_count is not None and len(out) >= max_count)
            ):
                break
            out.append(e)
        return out

    def unstable(self) -> list[Entry]:
        return self.entries[self.stable_last - self.snap_index :]

    def to_apply(self, limit: int) -> list[Entry]:
        lo = max(self.applied, self.snap_index) + 1
        hi = min(self.commit, lo + limit - 1)
        return self.slice(lo, hi + 1) if hi >= lo else []

    def conf_at(self, index: int) -> ConfState:
        """Membership after every conf change up to `index` (effective when appended)."""
        assert index >= self.snap_index, (index, self.snap_index)
        conf = self.snapshot.meta.conf
        for ci in self.conf_indexes:
            if ci > index:
                break
            conf = apply_change(conf, self.entry(ci).conf_change())
        return conf

    def last_conf_index(self) -> int:
        return self.conf_indexes[-1] if self.conf_indexes else 0

    def find_conflict(self, entries: list[Entry] | tuple[Entry, ...]) -> int:
        """The first of `entries` whose term differs from ours or that we lack; 0 if we hold
        them all. Only a real conflict truncates, so a stale, shorter append never cuts
        entries a later append brought."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= `index` whose term is <= `term`: entries above it cannot match
        a log whose entry at `index` has term `term`, so the leader skips them in one step."""
        index = min(index, self.last_index())
        while index > self.snap_index:
            t = self.term(index)
            assert t is not None
            if t <= term:
                break
            index -= 1
        return index

    # -- writing -----------------------------------------------------------------------

    def maybe_append(
        self, prev_index: int, prev_term: int, leader_commit: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """AppendEntries' consistency check and append; the last index now known to match the
        leader, or None when the check fails."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        ci = self.find_conflict(entries)
        if ci:
            assert ci > self.commit, (
                f"conflict at {ci} would truncate committed entries (commit {self.commit})"
            )
            self._truncate_and_append(list(entries[ci - prev_index - 1 :]))
        self.commit_to(min(leader_commit, last_new))
        return last_new

    def append(self, entries: list[Entry]) -> None:
        """The leader's own append at the end of its log."""
        if entries:
            assert entries[0].index == self.last_index() + 1, (entries[0].index, self.last_index())
            self._truncate_and_append(entries)

    def _truncate_and_append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        assert self.snap_index < first <= self.last_index() + 1, (
            first,
            self.snap_index,
            self.last_index(),
        )
        assert first > self.commit or not self.entries, "truncating committed entries"
        for prev, e in itertools.pairwise(entries):
            assert e.index == prev.index + 1 and e.term >= prev.term, (prev, e)
        before = self.term(first - 1)
        assert before is not None and before <= entries[0].term, (before, entries[0])
        del self.entries[first - self.snap_index - 1 :]
        self.entries.extend(entries)
        kept = [ci for ci in self.conf_indexes if ci < first]
        added = [e.index for e in entries if e.kind is EntryKind.CONF_CHANGE]
        if added or len(kept) != len(self.conf_indexes):
            self.conf_version += 1
        self.conf_indexes = kept + added
        self.stable_last = min(self.stable_last, first - 1)

    def commit_to(self, index: int) -> None:
        if index > self.commit:
            assert index <= self.last_index(), (
                f"commit {index} beyond last index {self.last_index()}"
            )
            self.commit = index

    def stable_to(self, index: int, term: int) -> None:
        """The shell made entries up to `index` durable; ignored when the log has changed at
        `index` since (a conflicting append arrived between ready and advance)."""
        if index > self.stable_last and self.match_term(index, term):
            self.stable_last = index

    def applied_to(self, index: int) -> None:
        if index > self.applied:
            assert index <= self.commit, (index, self.commit)
            self.applied = index

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the log by a snapshot from the leader (InstallSnapshot): everything we hold
        is either covered by it or conflicts with it."""
        meta = snapshot.meta
        assert meta.index > self.commit, "a stale snapshot must be rejected before restore"
        self.snapshot = snapshot
        self.pending_snapshot = snapshot
        self.entries = []
        self.conf_indexes = []
        self.conf_version += 1
        self.commit = meta.index
        self.applied = meta.index
        self.stable_last = meta.index

    def compact(self, index: int, data: bytes) -> Snapshot:
        """Drop entries up to `index`, which the shell has snapshotted and applied."""
        assert self.snap_index < index <= self.applied, (index, self.snap_index, self.applied)
        assert index <= self.stable_last, (index, self.stable_last)
        term = self.term(index)
        assert term is not None
        meta = SnapshotMeta(index, term, self.conf_at(index))
        self.entries = self.entries[index - self.snap_index :]
        self.conf_indexes = [ci for ci in self.conf_indexes if ci > index]
        self.snapshot = Snapshot(meta, data)
        return self.snapshot

    def check(self) -> None:
        assert self.snap_index <= self.applied <= self.commit <= self.last_index(), (
            self.snap_index,
            self.applied,
            self.commit,
            self.last_index(),
        )
        assert self.snap_index <= self.stable_last <= self.last_index()
        if self.entries:
            assert self.entries[0].index == self.snap_index + 1
            assert self.entries[-1].index == self.last_index()
            assert self.entries[0].term >= self.snap_term
