"""The bytes of a Raft snapshot of the coordinator's applied state: its JSON, compressed.

Why compressed: a snapshot holds every live transaction and tombstone (~500 bytes of JSON a
record), each node keeps its latest one in memory and in PostgreSQL, and a lagging follower
receives it in one signed POST (as base64), at most 1 GiB (`raft.transport.
MAX_SIGNED_BODY_BYTES`; bodies over 64 MiB are read one at a time). The records compress well
(repeated keys, URLs, states): zlib at level 1 measured ~20x on benchmark-shaped records for
~1 ms per MB, next to ~8 ms per MB to read them out of PostgreSQL.

Format: MAGIC, then a zlib stream of the JSON. Data without MAGIC is the JSON itself: what
nodes wrote before this format, and what `txc restore --peers` seeds; it reads as before.
"""

from __future__ import annotations

import zlib

MAGIC = b"TXCZ1\n"
COMPRESS_LEVEL = 1
MAX_JSON_BYTES = 4 * 1024**3  # what one snapshot may inflate to; beyond is refused


class SnapshotTooLarge(ValueError):
    """The snapshot inflates past MAX_JSON_BYTES."""


def pack(doc_json: bytes) -> bytes:
    return MAGIC + zlib.compress(doc_json, COMPRESS_LEVEL)


class Packer:
    """`pack` by pieces: the JSON is never held whole (a big state's snapshot is written as
    its records stream out of the database)."""

    def __init__(self) -> None:
        self._deflate = zlib.compressobj(COMPRESS_LEVEL)
        self._out = [MAGIC]

    def add(self, piece: bytes) -> None:
        self._out.append(self._deflate.compress(piece))

    def finish(self) -> bytes:
        self._out.append(self._deflate.flush())
        return b"".join(self._out)


def unpack(data: bytes, max_json_bytes: int = MAX_JSON_BYTES) -> bytes:
    """The snapshot's JSON, from either form. Raises zlib.error for a damaged stream and
    SnapshotTooLarge for one that would inflate past `max_json_bytes`."""
    if not data.startswith(MAGIC):
        return data
    inflater = zlib.decompressobj()
    out = inflater.decompress(memoryview(data)[len(MAGIC) :], max_json_bytes)
    if inflater.unconsumed_tail:
        raise SnapshotTooLarge(f"a snapshot inflates past {max_json_bytes} bytes")
    out += inflater.flush()
    if not inflater.eof:
        raise zlib.error("truncated snapshot")
    return out
