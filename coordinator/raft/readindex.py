"""ReadIndex bookkeeping (Raft thesis §6.4).

A read may be answered at index i only once the leader knows it was still the leader after
the read arrived: it records its commit index, sends a heartbeat round carrying the read's
context, and answers when a quorum echoes that context. A quorum answering a later round
confirms every earlier read too, so reads are released in arrival order.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ReadRequest:
    ctx: bytes
    src: int  # the node that asked: the leader itself or a follower that forwarded the read
    index: int  # the leader's commit index when the read arrived
    acks: set[int] = field(default_factory=set)


class ReadQueue:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_ctx: dict[bytes, ReadRequest] = {}
        self._order: list[bytes] = []

    def __len__(self) -> int:
        return len(self._order)

    def add(self, ctx: bytes, src: int, index: int, self_id: int) -> bool:
        """False when the context is already waiting (a duplicate) or the queue is full."""
        if ctx in self._by_ctx or len(self._order) >= self.limit:
            return False
        self._by_ctx[ctx] = ReadRequest(ctx, src, index, {self_id})
        self._order.append(ctx)
        return True

    def last_ctx(self) -> bytes:
        return self._order[-1] if self._order else b""

    def ack(self, ctx: bytes, node: int) -> set[int] | None:
        req = self._by_ctx.get(ctx)
        if req is None:
            return None
        req.acks.add(node)
        return req.acks

    def release_through(self, ctx: bytes) -> list[ReadRequest]:
        """Every read up to and including `ctx`, oldest first."""
        if ctx not in self._by_ctx:
            return []
        n = self._order.index(ctx) + 1
        released = [self._by_ctx.pop(c) for c in self._order[:n]]
        del self._order[:n]
        return released

    def clear(self) -> None:
        self._by_ctx.clear()
        self._order.clear()
