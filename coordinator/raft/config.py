"""Named bounds of the Raft core (TigerBeetle style: every loop, queue and batch has one).

Times are in ticks: the core has no clock, the shell calls `tick()` every tick interval
(e.g. 50 ms), so ELECTION_TICKS=10 is a 0.5-1 s randomized election timeout.
"""

from __future__ import annotations

from dataclasses import dataclass

# An election timeout is drawn uniformly from [election_ticks, 2 * election_ticks).
ELECTION_TICKS = 10
# The leader sends heartbeats every HEARTBEAT_TICKS; well below ELECTION_TICKS so that a few
# lost heartbeats do not start an election.
HEARTBEAT_TICKS = 1
# Append messages that may be in flight to one follower in the replicate state (pipelining).
MAX_INFLIGHT_MSGS = 64
# Entries and bytes carried by one append message (batching).
MAX_ENTRIES_PER_MSG = 64
MAX_BYTES_PER_MSG = 1 << 20
# Proposals the leader accepts beyond the commit index before refusing more (back-pressure,
# so a partitioned leader does not grow its log without limit).
MAX_UNCOMMITTED_ENTRIES = 10_000
# Read requests waiting for leadership confirmation.
MAX_PENDING_READS = 10_000
# Committed entries handed to the shell in one Ready.
MAX_COMMITTED_PER_READY = 1024
# A follower in the snapshot state that has not acknowledged the snapshot after this many
# ticks goes back to probing (the snapshot message may have been lost).
SNAPSHOT_RETRY_TICKS = 2 * ELECTION_TICKS


@dataclass(frozen=True)
class RaftConfig:
    """Per-node settings. The defaults are the named bounds above; tests shrink them."""

    id: int
    election_ticks: int = ELECTION_TICKS
    heartbeat_ticks: int = HEARTBEAT_TICKS
    max_inflight_msgs: int = MAX_INFLIGHT_MSGS
    max_entries_per_msg: int = MAX_ENTRIES_PER_MSG
    max_bytes_per_msg: int = MAX_BYTES_PER_MSG
    max_uncommitted_entries: int = MAX_UNCOMMITTED_ENTRIES
    max_pending_reads: int = MAX_PENDING_READS
    max_committed_per_ready: int = MAX_COMMITTED_PER_READY
    snapshot_retry_ticks: int = SNAPSHOT_RETRY_TICKS
    pre_vote: bool = True
    check_quorum: bool = True

    def __post_init__(self) -> None:
        assert self.id > 0, "node ids are positive"
        assert 0 < self.heartbeat_ticks < self.election_ticks
        assert self.max_inflight_msgs >= 1
        assert self.max_entries_per_msg >= 1
        assert self.max_bytes_per_msg >= 1
        assert self.max_uncommitted_entries >= 1
        assert self.max_committed_per_ready >= 1
