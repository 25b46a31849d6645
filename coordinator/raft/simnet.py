"""Simulated network: drops, duplicates, delays (hence reordering) and partitions.

Every decision comes from the simulation's seeded generator, so a seed replays the same
deliveries. Messages are sometimes sent through their JSON form, so the wire encoding is
exercised by the same runs that check safety.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass

from coordinator.raft.messages import Message


@dataclass
class NetParams:
    min_delay_ms: int
    max_delay_ms: int
    drop_p: float
    dup_p: float
    json_p: float  # share of messages encoded to JSON and back


class SimNet:
    def __init__(self, rng: random.Random, params: NetParams) -> None:
        self.rng = rng
        self.params = params
        self.blocked: set[tuple[int, int]] = set()
        self.sent = 0
        self.dropped = 0

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        gs = [set(g) for g in groups]
        self.blocked = {(a, b) for g in gs for h in gs if g is not h for a in g for b in h}

    def heal(self) -> None:
        self.blocked = set()

    def connected(self, src: int, dst: int) -> bool:
        return (src, dst) not in self.blocked

    def route(self, m: Message, now: int) -> list[tuple[int, Message]]:
        """When (and in what form) the message arrives: none, once, or twice."""
        p = self.params
        self.sent += 1
        if not self.connected(m.src, m.dst) or self.rng.random() < p.drop_p:
            self.dropped += 1
            return []
        if self.rng.random() < p.json_p:
            m = Message.from_dict(json.loads(json.dumps(m.to_dict())))
        copies = 2 if self.rng.random() < p.dup_p else 1
        return [(now + self.rng.randint(p.min_delay_ms, p.max_delay_ms), m) for _ in range(copies)]
