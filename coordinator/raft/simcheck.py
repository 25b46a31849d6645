"""The simulation's safety invariants, checked incrementally after every step.

Each check keeps a global record and compares every new observation with it, so checking
costs time proportional to what changed, not to the size of the logs:

* election safety: at most one leader per term, and one vote per node and term;
* log matching: an (index, term) pair names one entry, with one predecessor term;
* leader completeness: a new leader holds every entry committed in an earlier term;
* a committed entry never changes (committed index -> term, data);
* state machine safety: every node applies the committed entry at each index;
* a transaction's outcome never changes once seen, and participants never disagree;
* linearizable reads: a read index covers everything committed before the read was asked.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.model import Outcome, Vote
from coordinator.raft.core import RaftNode
from coordinator.raft.messages import Entry, EntryKind, Message, MsgType
from coordinator.raft.ready import Role


class InvariantViolation(AssertionError):
    pass


@dataclass(frozen=True)
class Committed:
    term: int
    kind: EntryKind
    data: bytes
    seen_in_term: int  # the observer's term when first seen committed (>= committing term)


class Checker:
    def __init__(self) -> None:
        self.leader_of_term: dict[int, int] = {}
        self.entry_ids: dict[tuple[int, int], tuple[EntryKind, bytes, int]] = {}
        self.committed: dict[int, Committed] = {}
        self.max_commit = 0
        self.checked_commit: dict[int, int] = {}
        self.outcomes: dict[str, Outcome] = {}
        self.local: dict[str, dict[str, Outcome]] = {}
        self.votes: dict[tuple[int, int], int] = {}  # (voter, term) -> candidate

    def fail(self, what: str) -> None:
        raise InvariantViolation(what)

    # -- per step ----------------------------------------------------------------------

    def check_nodes(self, nodes: dict[int, RaftNode]) -> None:
        for nid, node in nodes.items():
            if node.role is Role.LEADER:
                self.on_leader(node)
            self._check_commit(nid, node)

    def on_leader(self, node: RaftNode) -> None:
        known = self.leader_of_term.get(node.term)
        if known is None:
            self.leader_of_term[node.term] = node.id
            self._check_leader_completeness(node)
        elif known != node.id:
            self.fail(f"two leaders in term {node.term}: {known} and {node.id}")

    def _check_leader_completeness(self, node: RaftNode) -> None:
        log = node.log
        for index, c in self.committed.items():
            if c.seen_in_term >= node.term or index <= log.snap_index:
                continue
            if log.term(index) != c.term:
                self.fail(
                    f"leader {node.id} of term {node.term} lacks committed entry {index} "
                    f"(term {c.term}); it has term {log.term(index)}"
                )

    def _check_commit(self, nid: int, node: RaftNode) -> None:
        log = node.log
        lo = max(self.checked_commit.get(nid, 0), log.snap_index)
        if log.commit <= lo:
            return
        for index in range(lo + 1, log.commit + 1):
            e = log.entry(index)
            c = self.committed.get(index)
            if c is None:
                self.committed[index] = Committed(e.term, e.kind, e.data, node.term)
            elif (c.term, c.kind, c.data) != (e.term, e.kind, e.data):
                self.fail(
                    f"committed entry {index} changed: was term {c.term}, node {nid} "
                    f"committed term {e.term}"
                )
        self.checked_commit[nid] = log.commit
        self.max_commit = max(self.max_commit, log.commit)

    def on_restart(self, nid: int, node: RaftNode) -> None:
        self.checked_commit[nid] = 0
        self._check_commit(nid, node)

    # -- per event kind ------------------------------------------------------------------

    def on_persist(self, node: RaftNode, entries: list[Entry]) -> None:
        """Log matching, checked on every entry a node persists."""
        for e in entries:
            prev = node.log.term(e.index - 1)
            assert prev is not None
            key = (e.index, e.term)
            seen = self.entry_ids.get(key)
            mine = (e.kind, e.data, prev)
            if seen is None:
                self.entry_ids[key] = mine
            elif seen != mine:
                self.fail(f"log matching: node {node.id} holds another entry at {key}")

    def on_send(self, m: Message) -> None:
        """A node never grants its vote to two candidates in one term, restarts included."""
        if m.type is MsgType.VOTE_RESP and not m.reject:
            first = self.votes.setdefault((m.src, m.term), m.dst)
            if first != m.dst:
                self.fail(f"node {m.src} voted for {first} and {m.dst} in term {m.term}")

    def on_apply(self, node: RaftNode, e: Entry) -> None:
        nid = node.id
        self._check_commit(nid, node)
        c = self.committed.get(e.index)
        if c is None or (c.term, c.data) != (e.term, e.data):
            self.fail(
                f"state machine safety: node {nid} applied {e.index}/{e.term} not committed as such"
            )

    def on_outcome(self, txid: str, outcome: Outcome, who: str) -> None:
        first = self.outcomes.setdefault(txid, outcome)
        if first is not outcome:
            self.fail(
                f"transaction {txid} outcome changed from {first} to {outcome} (seen by {who})"
            )

    def on_local(self, txid: str, participant: str, outcome: Outcome, vote: Vote) -> None:
        """A participant committed or aborted its part."""
        self.on_outcome(txid, outcome, f"participant {participant}")
        if outcome is Outcome.COMMIT and vote is Vote.NO:
            self.fail(f"participant {participant} of {txid} voted NO but committed")
        local = self.local.setdefault(txid, {})
        local[participant] = outcome
        if len(set(local.values())) > 1:
            self.fail(f"participants of {txid} disagree: {local}")

    def on_read(self, nid: int, ctx: bytes, index: int, watermark: int) -> None:
        if index < watermark:
            self.fail(
                f"stale read on node {nid}: read {ctx!r} got index {index}, but {watermark} "
                "was committed before it was asked"
            )

    # -- occasionally ----------------------------------------------------------------------

    def full_check(self, nodes: dict[int, RaftNode]) -> None:
        """Log matching over whole logs, pairwise (the incremental checks' safety net)."""
        for a in nodes.values():
            for b in nodes.values():
                if a.id >= b.id:
                    continue
                lo = max(a.log.snap_index, b.log.snap_index) + 1
                hi = min(a.log.last_index(), b.log.last_index())
                same = [i for i in range(lo, hi + 1) if a.log.term(i) == b.log.term(i)]
                if not same:
                    continue
                top = same[-1]
                for i in range(lo, top + 1):
                    if a.log.entry(i) != b.log.entry(i):
                        self.fail(
                            f"log matching: nodes {a.id} and {b.id} differ at {i} below {top}"
                        )
