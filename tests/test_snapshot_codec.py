"""Snapshot data: compressed JSON, with the older plain-JSON form still read, a damaged or
oversized stream refused, and a big state sent to a follower within the transport's limit."""

from __future__ import annotations

import base64
import json
import uuid
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator import snapshot_codec
from coordinator.raft.transport import MAX_BODY_BYTES
from coordinator.replicated_log import snapshot_members

RECORDS_WITHIN_LIMIT = 200_000  # over twice what plain JSON allowed (~90,000)


@given(st.binary(max_size=4096))
def test_pack_then_unpack_is_identity(doc: bytes) -> None:
    assert snapshot_codec.unpack(snapshot_codec.pack(doc)) == doc


def test_plain_json_from_earlier_versions_reads_as_is() -> None:
    doc = json.dumps({"transactions": [], "members": {"1": "http://a"}}).encode()
    assert snapshot_codec.unpack(doc) == doc
    assert snapshot_members(doc) == {1: "http://a"}
    assert snapshot_members(snapshot_codec.pack(doc)) == {1: "http://a"}


def test_damaged_and_oversized_streams_are_refused() -> None:
    packed = snapshot_codec.pack(b"x" * 10_000)
    with pytest.raises(zlib.error):
        snapshot_codec.unpack(packed[:-5])  # truncated
    with pytest.raises(zlib.error):
        snapshot_codec.unpack(snapshot_codec.MAGIC + b"not zlib")
    with pytest.raises(snapshot_codec.SnapshotTooLarge):
        snapshot_codec.unpack(packed, max_json_bytes=1000)


def test_a_big_state_fits_in_one_snapshot_request() -> None:
    """Records shaped like the benchmark's (two participants, committed): the snapshot of
    200,000 of them, base64 on the wire, stays under the POST limit; as plain JSON it would
    not."""
    record = {
        "txid": "",
        "state": "committed",
        "outcome": "commit",
        "created_at": 1764150000.123456,
        "updated_at": 1764150000.234567,
        "expires_at": 1764150060.123456,
        "labels": {},
        "idempotency_key": "",
        "reason": None,
        "participants": [
            {
                "name": f"bank-{c}",
                "url": f"http://127.0.0.1:800{i}/txc",
                "vote": "yes",
                "phase2": "done",
                "attempts": 1,
                "last_error": None,
                "heuristic": None,
            }
            for i, c in enumerate("ab")
        ],
    }
    docs = []
    for n in range(RECORDS_WITHIN_LIMIT):
        record["txid"] = str(uuid.uuid4())
        record["idempotency_key"] = uuid.uuid4().hex
        record["created_at"] = 1764150000.0 + n / 97.0
        docs.append(json.dumps(record, separators=(",", ":")))
    plain = ('{"transactions":[' + ",".join(docs) + '],"members":{}}').encode()
    packed = snapshot_codec.pack(plain)
    assert len(base64.b64encode(plain)) > MAX_BODY_BYTES
    assert len(base64.b64encode(packed)) < MAX_BODY_BYTES
    assert snapshot_codec.unpack(packed) == plain
