"""The simulation's safety invariants, checked incrementally after every step.

Each check keeps a global record and compares every new observation with it, so checking
costs time proportional to what changed, not to the size of the logs:

* election safety: at most one leader per term, and one vote per node and term;
* log matching: an (index, term) pair names one entry, with one predecessor term;
* leader completeness: a new leader holds every entry committed in an earlier term;
* a committed entry never changes (committed index -> term, data);
* state machine safety: every node applies the committed entry at each index;
* a transaction's outcome never changes once seen, and participants never disagree;
* retention: every node's applied state gives, for every txid it knows (record or
  tombstone), the first decision ever applied for it; a late client or participant asking
  again (a repeated commit or begin, an outcome inquiry) gets that decision; every node's
  purge drops the same tombstones and every node's state (snapshots included) has the same
  tombstone horizon at the same index;
* linearizable reads: a read index covers everything committed before the read was asked.

A purged tombstone's txid is unknown again by design (presumed abort): a command applied to
it after the purge starts a new life of the txid (a late Begin creates a new transaction, a
late inquiry records a presumed abort), which need not agree with the first one. Lives are
told apart by the log index of the purges that ended them (the same on every node), and
decisions are compared within one life: the contradiction check excludes purged txids
explicitly, from the purge's index on, instead of trusting the simulated askers' timing.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from dataclasses import dataclass

from coordinator.model import Outcome, Transaction, Vote
from coordinator.raft.core import RaftNode
from coordinator.raft.messages import Entry, EntryKind, Message, MsgType
from coordinator.raft.ready import Role
from coordinator.raft.simclients import Ask
from coordinator.statemachine import Machine, Result, Status


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
        # (txid, life) -> the first decision applied anywhere; life 0 is the transaction
        # itself, life n the txid after the n-th purge of its tombstone (see above).
        self.outcomes: dict[tuple[str, int], Outcome] = {}
        self.purges: dict[str, list[int]] = {}  # txid -> log indexes of the purges dropping it
        self.purge_drops: dict[int, frozenset[str]] = {}  # purge entry index -> txids dropped
        self.horizon_indexes: list[int] = []  # indexes of the purges applied, ascending
        self.horizons: dict[int, float] = {}  # purge entry index -> horizon after it
        self.forgotten: set[tuple[str, int]] = set()
        self.local: dict[tuple[str, int], dict[str, Outcome]] = {}
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

    def life(self, txid: str, index: int) -> int:
        """Which life of `txid` a state that applied the log up to `index` holds: how many
        purges of its tombstone that prefix contains."""
        purges = self.purges.get(txid)
        return bisect_right(purges, index) if purges else 0

    def purged(self, txid: str) -> bool:
        return txid in self.purges

    def decision(self, txid: str) -> Outcome | None:
        """The first decision ever applied for the transaction (its first life)."""
        return self.outcomes.get((txid, 0))

    def on_outcome(self, txid: str, outcome: Outcome, who: str, index: int) -> None:
        """`who`, having applied the log up to `index`, shows `outcome` for `txid`."""
        life = self.life(txid, index)
        first = self.outcomes.setdefault((txid, life), outcome)
        if first is not outcome:
            after = f" (after {life} purges of its tombstone)" if life else ""
            self.fail(
                f"transaction {txid} outcome changed from {first} to {outcome}{after} "
                f"(seen by {who} at index {index})"
            )

    def on_local(
        self, txid: str, participant: str, outcome: Outcome, vote: Vote, index: int
    ) -> None:
        """A participant committed or aborted its part (as a node at `index` told it)."""
        self.on_outcome(txid, outcome, f"participant {participant}", index)
        if outcome is Outcome.COMMIT and vote is Vote.NO:
            self.fail(f"participant {participant} of {txid} voted NO but committed")
        local = self.local.setdefault((txid, self.life(txid, index)), {})
        local[participant] = outcome
        if len(set(local.values())) > 1:
            self.fail(f"participants of {txid} disagree: {local}")

    def on_forget(self, txid: str, index: int) -> bool:
        """A Forget made a tombstone; True the first time for this life of the txid."""
        key = (txid, self.life(txid, index))
        if key in self.forgotten:
            return False
        self.forgotten.add(key)
        return True

    def on_purge(self, index: int, dropped: frozenset[str], horizon: float, who: str) -> bool:
        """`who` applied the purge at `index`: it dropped `dropped` and its horizon is now
        `horizon`. Every node must drop the same tombstones there (a node whose snapshot
        lost some would not) and reach the same horizon. True the first time."""
        seen = self.purge_drops.get(index)
        if seen is None:
            self.purge_drops[index] = dropped
            self.horizons[index] = horizon
            insort(self.horizon_indexes, index)
            for txid in dropped:
                insort(self.purges.setdefault(txid, []), index)
            return True
        if seen != dropped:
            self.fail(
                f"purge at {index}: {who} dropped {sorted(dropped)}, another node {sorted(seen)}"
            )
        if self.horizons[index] != horizon:
            self.fail(
                f"purge at {index}: {who} has horizon {horizon}, another node "
                f"{self.horizons[index]}"
            )
        return False

    def check_machine(self, m: Machine, index: int, who: str) -> None:
        """A whole applied state (a node restored or installing a snapshot, and now and
        then every node): every txid it knows shows its first decision (of this life), and
        the horizon is the one every node had after the last purge up to `index`."""
        for txid, t in m.transactions.items():
            if t.outcome is not None:
                self.on_outcome(txid, t.outcome, who, index)
            if t.forgotten_at is not None:
                assert not t.participants and t.state.terminal, t
        k = bisect_right(self.horizon_indexes, index)
        want = self.horizons[self.horizon_indexes[k - 1]] if k else 0.0
        if m.tombstone_horizon != want:
            self.fail(
                f"{who} at index {index} has tombstone horizon {m.tombstone_horizon}, "
                f"every node had {want} there"
            )

    def on_answer(self, kind: Ask, txid: str, results: list[Result], who: str, index: int) -> str:
        """A late client or participant's request (`kind`) was applied by `who` at
        `index` with `results`: the answer must be the decision. Returns where the answer
        came from: "record", "tombstone", or "purged" (a new life of the txid: presumed
        abort by design, so not compared with the first decision)."""
        life = self.life(txid, index)
        if life:
            return "purged"
        decision = self.decision(txid)
        assert decision is not None, f"{kind} asker of {txid} before any decision"
        first = results[0]
        what = f"late {kind} of {txid} applied by {who} at {index}"
        if first.txn is None or first.status is Status.CREATED:
            self.fail(f"{what}: the decided transaction is unknown ({first.status})")
        for r in results:
            t = r.txn
            if t is None or t.outcome is not decision:
                self.fail(f"{what}: answered {t.outcome if t else r.status}, decided {decision}")
        assert first.txn is not None
        return "tombstone" if first.txn.forgotten_at is not None else "record"

    def on_read_answer(self, t: Transaction, who: str, index: int) -> str:
        """A participant in doubt read its outcome from `who` (applied up to `index`), as
        `Engine.outcome` does when the transaction is known: the decision, whatever life
        it is in (a new life's decision is checked against that life's first one)."""
        assert t.outcome is not None
        self.on_outcome(t.txid, t.outcome, f"outcome read from {who}", index)
        if self.life(t.txid, index):
            return "purged"
        return "tombstone" if t.forgotten_at is not None else "record"

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
