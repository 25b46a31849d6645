"""A synchronous in-memory cluster for scripted tests: each node has a durable store that
follows the Ready contract, and messages are delivered by hand or pumped to quiescence, with
optional filters that drop or hold them."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from coordinator.raft import (
    Entry,
    HardState,
    Message,
    PersistentState,
    RaftConfig,
    RaftNode,
    Ready,
    Role,
    Snapshot,
)


@dataclass
class Store:
    """What a node has made durable, exactly as the Ready contract says to write it."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)
    applied: list[Entry] = field(default_factory=list)
    applied_index: int = 0

    def persist(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.entries = []
        if rd.entries:
            first = rd.entries[0].index
            self.entries = [e for e in self.entries if e.index < first] + list(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state

    def state(self, boot: PersistentState) -> PersistentState:
        snap = self.snapshot or boot.snapshot
        return PersistentState(self.hard_state, snap, tuple(self.entries), self.applied_index)


# True: deliver; False: drop; a Message: deliver that instead (the network rewrote it).
Filter = Callable[[Message], "bool | Message"]


class Cluster:
    def __init__(
        self,
        n: int = 3,
        *,
        seed: int = 0,
        learners: Iterable[int] = (),
        **cfg: int | bool,
    ) -> None:
        self.ids = list(range(1, n + 1))
        learner_set = frozenset(learners)
        self.boot = PersistentState.bootstrap(frozenset(self.ids) - learner_set, learner_set)
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.stores = {
            i: Store(self.boot.hard_state, None, list(self.boot.entries)) for i in self.ids
        }
        self.nodes = {i: self._make(i, self.boot) for i in self.ids}
        self.outbox: list[Message] = []
        self.read_states: dict[int, list] = {i: [] for i in self.ids}
        self.readies: dict[int, list[Ready]] = {i: [] for i in self.ids}

    def _make(self, i: int, state: PersistentState) -> RaftNode:
        config = RaftConfig(id=i, **self.cfg)  # type: ignore[arg-type]
        return RaftNode(config, state, random.Random(self.rng.random()))

    def restart(self, i: int) -> RaftNode:
        self.nodes[i] = self._make(i, self.stores[i].state(self.boot))
        return self.nodes[i]

    def process(self, i: int) -> Ready | None:
        """Run one Ready cycle of node i: persist, queue messages, apply, advance."""
        node = self.nodes[i]
        if not node.has_ready():
            return None
        rd = node.ready()
        self.readies[i].append(rd)
        store = self.stores[i]
        store.persist(rd)
        self.outbox.extend(rd.messages)
        if rd.snapshot is not None:
            store.applied = []
            store.applied_index = rd.snapshot.meta.index
        for e in rd.committed:
            if e.index > store.applied_index:
                store.applied.append(e)
                store.applied_index = e.index
        self.read_states[i].extend(rd.read_states)
        node.advance(rd)
        return rd

    def process_all(self) -> None:
        for i in self.ids:
            self.process(i)

    def deliver(self, allow: Filter | None = None) -> int:
        """Deliver queued messages once (those refused by `allow` are dropped)."""
        msgs, self.outbox = self.outbox, []
        n = 0
        for m in msgs:
            verdict = allow(m) if allow is not None else True
            if m.dst not in self.nodes or verdict is False:
                continue
            if isinstance(verdict, Message):
                m = verdict
            self.nodes[m.dst].step(m)
            n += 1
        return n

    def pump(self, allow: Filter | None = None, rounds: int = 1000) -> None:
        for _ in range(rounds):
            self.process_all()
            if not self.outbox:
                return
            self.deliver(allow)
        raise AssertionError("cluster did not quiesce")

    def settle(self, allow: Filter | None = None) -> None:
        """Pump, then let the leader's heartbeat carry its commit index to the followers (a
        commit alone sends no message: it rides on the next append or heartbeat), and pump."""
        self.pump(allow)
        leader = self.leader()
        if leader is not None:
            self.tick(leader.id, leader.cfg.heartbeat_ticks)
            self.pump(allow)

    def tick(self, i: int, n: int = 1) -> None:
        for _ in range(n):
            self.nodes[i].tick()

    def tick_all(self, n: int = 1, allow: Filter | None = None) -> None:
        for _ in range(n):
            for i in self.ids:
                self.nodes[i].tick()
            self.pump(allow)

    def campaign(self, i: int, allow: Filter | None = None) -> None:
        """Let node i's election timer fire (others' timers stand still), then pump."""
        node = self.nodes[i]
        for _ in range(3 * node.cfg.election_ticks):
            node.tick()
            if node.role is not Role.FOLLOWER:
                break
        self.pump(allow)

    def forget_leader(self, *ids: int) -> None:
        """As if an election timeout passed since these followers last heard from a leader:
        their leader lease is over, so they grant (pre-)votes again."""
        for i in ids:
            node = self.nodes[i]
            node.election_elapsed = max(node.election_elapsed, node.cfg.election_ticks)

    def leader(self) -> RaftNode | None:
        leaders = [n for n in self.nodes.values() if n.role is Role.LEADER]
        if not leaders:
            return None
        return max(leaders, key=lambda n: n.term)


def isolate(*ids: int) -> Filter:
    """Drop every message to or from the given nodes."""
    cut = set(ids)
    return lambda m: m.src not in cut and m.dst not in cut


def split(a: Iterable[int], b: Iterable[int]) -> Filter:
    """Drop messages between the two groups."""
    sa, sb = set(a), set(b)
    return lambda m: not ((m.src in sa and m.dst in sb) or (m.src in sb and m.dst in sa))
