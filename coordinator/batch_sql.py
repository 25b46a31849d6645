"""One batch, one statement: the SQL that persists a Raft Ready and applies committed commands.

Each write below is a single statement made of data-modifying CTEs, so one round trip is one
atomic, durable transaction (run in autocommit on coordinator/pgconn.py's connection).
Rows travel as arrays (`unnest`) or as one JSON document (`jsonb_to_recordset`): the
statement text never changes, so psycopg prepares it once per connection.

The parts of one statement touch disjoint rows: the log upsert writes indexes
`first..last` and the truncation deletes indexes `> last`; every other part writes another
table. (PostgreSQL runs a statement's CTEs on one snapshot in no set order, so that is what
makes the combination safe.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from coordinator.raft.messages import Entry, HardState

# -- Raft: the durable part of a Ready -------------------------------------------------------

# Entries `first..last` replace whatever the log held from `first` on: an upsert of those
# indexes plus the removal of any index past `last` (a follower's conflicting suffix).
_LOG_UPSERT = """
log_put AS (
  INSERT INTO txc_log ("index", term, kind, data)
  SELECT * FROM unnest(%(idx)s::bigint[], %(terms)s::bigint[], %(kinds)s::text[],
                       %(datas)s::bytea[])
  ON CONFLICT ("index") DO UPDATE
    SET term = excluded.term, kind = excluded.kind, data = excluded.data
),
log_cut AS (
  DELETE FROM txc_log WHERE %(has_entries)s AND "index" > %(last)s
)"""

_HARD_STATE = """
hard AS (
  INSERT INTO txc_hard_state (id, term, vote, commit_index)
  SELECT 1, %(hs_term)s, %(hs_vote)s, %(hs_commit)s WHERE %(has_hs)s
  ON CONFLICT (id) DO UPDATE
    SET term = excluded.term, vote = excluded.vote, commit_index = excluded.commit_index
)"""

RAFT_PERSIST = "WITH" + _LOG_UPSERT + "," + _HARD_STATE + "\nSELECT 1"


def raft_persist_params(entries: Sequence[Entry], hard_state: HardState | None) -> dict[str, Any]:
    hs = hard_state
    return {
        "idx": [e.index for e in entries],
        "terms": [e.term for e in entries],
        "kinds": [e.kind.value for e in entries],
        "datas": [e.data for e in entries],
        "has_entries": bool(entries),
        "last": entries[-1].index if entries else 0,
        "has_hs": hs is not None,
        "hs_term": hs.term if hs else 0,
        "hs_vote": str(hs.vote) if hs else "",
        "hs_commit": hs.commit if hs else 0,
    }


# -- applying committed commands -------------------------------------------------------------

_TRANSACTIONS = """
txns AS (
  INSERT INTO txc_transactions
    (txid, state, outcome, created_at, updated_at, expires_at, heuristic, labels, doc)
  SELECT x.txid, x.state, x.outcome, x.created_at, x.updated_at, x.expires_at, x.heuristic,
         x.labels, x.doc
  FROM jsonb_to_recordset(%(txns)s::jsonb) AS x(
    txid text, state text, outcome text, created_at float8, updated_at float8,
    expires_at float8, heuristic text, labels jsonb, doc jsonb)
  ON CONFLICT (txid) DO UPDATE
    SET state = excluded.state, outcome = excluded.outcome, updated_at = excluded.updated_at,
        expires_at = excluded.expires_at, heuristic = excluded.heuristic,
        labels = excluded.labels, doc = excluded.doc
),
hist AS (
  INSERT INTO txc_history (txid, "index", seq, at, kind, detail)
  SELECT x.txid, x."index", x.seq, x.at, x.kind, x.detail
  FROM jsonb_to_recordset(%(history)s::jsonb) AS x(
    txid text, "index" bigint, seq int, at float8, kind text, detail jsonb)
  ON CONFLICT DO NOTHING
),
forget AS (
  DELETE FROM txc_transactions WHERE txid = ANY(%(forgotten)s::text[])
),
tombs AS (
  INSERT INTO txc_tombstones (txid, outcome, created_at, decided_at, completed_at, forgotten_at)
  SELECT x.txid, x.outcome, x.created_at, x.decided_at, x.completed_at, x.forgotten_at
  FROM jsonb_to_recordset(%(tombstones)s::jsonb) AS x(
    txid text, outcome text, created_at float8, decided_at float8, completed_at float8,
    forgotten_at float8)
  ON CONFLICT (txid) DO UPDATE
    SET outcome = excluded.outcome, created_at = excluded.created_at,
        decided_at = excluded.decided_at, completed_at = excluded.completed_at,
        forgotten_at = excluded.forgotten_at
),
archived AS (
  INSERT INTO txc_archive (txid, forgotten_at, state, outcome, created_at, updated_at, labels, doc)
  SELECT x.txid, x.forgotten_at, x.state, x.outcome, x.created_at, x.updated_at, x.labels, x.doc
  FROM jsonb_to_recordset(%(archive)s::jsonb) AS x(
    txid text, forgotten_at float8, state text, outcome text, created_at float8,
    updated_at float8, labels jsonb, doc jsonb)
  ON CONFLICT DO NOTHING
),
audit AS (
  INSERT INTO txc_audit ("index", seq, at, actor, action, txid, detail)
  SELECT x."index", x.seq, x.at, x.actor, x.action, x.txid, x.detail
  FROM jsonb_to_recordset(%(audit)s::jsonb) AS x(
    "index" bigint, seq int, at float8, actor text, action text, txid text, detail jsonb)
  ON CONFLICT DO NOTHING
),
members AS (
  INSERT INTO txc_members (id, url)
  SELECT * FROM unnest(%(member_ids)s::int[], %(member_urls)s::text[])
  ON CONFLICT (id) DO UPDATE SET url = excluded.url
),
applied AS (
  INSERT INTO txc_applied (id, last_applied, last_applied_term, tombstone_horizon)
  VALUES (1, %(applied_index)s, %(applied_term)s, %(horizon)s)
  ON CONFLICT (id) DO UPDATE
    SET last_applied = excluded.last_applied, last_applied_term = excluded.last_applied_term,
        tombstone_horizon = excluded.tombstone_horizon
)"""

# A checkpoint (coordinator/checkpoint.py): applied state and `last_applied` together.
APPLY = "WITH" + _TRANSACTIONS + "\nSELECT 1"

# The single-node log: its entries, their application and the commit index in one statement
# (an entry of a single node is committed when written).
_LOG_APPEND = """
log_put AS (
  INSERT INTO txc_log ("index", term, kind, data)
  SELECT * FROM unnest(%(idx)s::bigint[], %(terms)s::bigint[], %(kinds)s::text[],
                       %(datas)s::bytea[])
),
commit_index AS (
  UPDATE txc_hard_state SET commit_index = %(applied_index)s WHERE id = 1
)"""

SINGLE_NODE_WRITE = "WITH" + _LOG_APPEND + "," + _TRANSACTIONS + "\nSELECT 1"

# Records and (unpurged) tombstones in one round trip: ('r', doc) or ('t', [txid, outcome,
# created_at, decided_at, completed_at, forgotten_at]). A txid has at most one of the two
# (forgetting deletes the record in the statement that writes the tombstone; a tombstone under
# the horizon is purged, whether or not its row is deleted yet).
LOOKUP_DOCS = """SELECT 'r', doc FROM txc_transactions WHERE txid = ANY(%(txids)s::text[])
UNION ALL
SELECT 't', jsonb_build_array(txid, outcome, created_at, decided_at, completed_at, forgotten_at)
FROM txc_tombstones WHERE txid = ANY(%(txids)s::text[]) AND forgotten_at >= %(horizon)s"""


@dataclass
class ApplyRows:
    """What applying a batch writes, built by the pure apply step (coordinator/store.py)."""

    transactions: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    # Retention (coordinator/retention.py): tombstones of forgotten records, the records they
    # replace (txids), the full records for this node's history table, and the tombstone
    # horizon (None: unchanged by the batch; a checkpoint always carries the current one).
    tombstones: list[dict[str, Any]] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    archive: list[dict[str, Any]] = field(default_factory=list)
    horizon: float | None = None


def _json(rows: list[dict[str, Any]]) -> str:
    # orjson: several times the standard library's speed on these documents (a transaction's
    # whole record per changed transaction, every batch, every node).
    return orjson.dumps(rows).decode()


def apply_params(
    rows: ApplyRows,
    applied_index: int,
    applied_term: int,
    members: dict[int, str],
) -> dict[str, Any]:
    assert rows.horizon is not None, "a write of the applied state carries the horizon"
    ids = sorted(members)
    return {
        "txns": _json(rows.transactions),
        "history": _json(rows.history),
        "audit": _json(rows.audit),
        "forgotten": rows.forgotten,
        "tombstones": _json(rows.tombstones),
        "archive": _json(rows.archive),
        "horizon": rows.horizon,
        "member_ids": ids,
        "member_urls": [members[i] for i in ids],
        "applied_index": applied_index,
        "applied_term": applied_term,
    }
