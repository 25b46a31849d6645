"""Wire types survive their JSON form (the shell sends them over HTTP)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from coordinator.raft import (
    ConfChange,
    ConfChangeOp,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MsgType,
    Snapshot,
    SnapshotMeta,
)

ids = st.integers(1, 9)
entries = st.builds(
    Entry,
    index=st.integers(1, 10**9),
    term=st.integers(1, 10**6),
    kind=st.sampled_from(EntryKind),
    data=st.binary(max_size=64),
)
confs = st.builds(
    lambda v, learners: ConfState(frozenset(v), frozenset(learners) - frozenset(v)),
    st.sets(ids, max_size=5),
    st.sets(ids, max_size=3),
)
snapshots = st.builds(
    Snapshot,
    meta=st.builds(SnapshotMeta, index=st.integers(0, 10**6), term=st.integers(0, 99), conf=confs),
    data=st.binary(max_size=64),
)
messages = st.builds(
    Message,
    type=st.sampled_from(MsgType),
    src=ids,
    dst=ids,
    term=st.integers(0, 10**6),
    log_term=st.integers(0, 10**6),
    index=st.integers(0, 10**9),
    entries=st.lists(entries, max_size=4).map(tuple),
    commit=st.integers(0, 10**9),
    reject=st.booleans(),
    reject_hint=st.integers(0, 10**9),
    snapshot=st.none() | snapshots,
    context=st.binary(max_size=32),
)


def _through_json(d: dict) -> dict:
    return json.loads(json.dumps(d))


@given(messages)
def test_message_roundtrip(m: Message) -> None:
    assert Message.from_dict(_through_json(m.to_dict())) == m


@given(entries)
def test_entry_roundtrip(e: Entry) -> None:
    assert Entry.from_dict(_through_json(e.to_dict())) == e


@given(st.integers(0, 99), st.integers(0, 9), st.integers(0, 10**6), snapshots)
def test_hard_state_and_snapshot_roundtrip(term: int, vote: int, commit: int, s: Snapshot) -> None:
    hs = HardState(term, vote, commit)
    assert HardState.from_dict(_through_json(hs.to_dict())) == hs
    assert Snapshot.from_dict(_through_json(s.to_dict())) == s


@given(st.sampled_from([ConfChangeOp.ADD_LEARNER, ConfChangeOp.PROMOTE, ConfChangeOp.REMOVE]), ids)
def test_conf_change_roundtrip(op: ConfChangeOp, node: int) -> None:
    cc = ConfChange(op, node)
    assert ConfChange.decode(cc.encode()) == cc
    boot = ConfChange(ConfChangeOp.BOOTSTRAP, voters=(1, 2, 3), learners=(4,))
    assert ConfChange.decode(boot.encode()) == boot
