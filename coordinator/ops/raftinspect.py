"""`txc raft log` and `txc raft state`: read a node's Raft log and state from its database.

Read-only (the connection sets `default_transaction_read_only`), and safe on a running node:
each command reads in one REPEATABLE READ transaction, so what it shows is one consistent
moment of the node's storage.

Decoding a log row (`txc_log`: index, term, kind, data):
- `normal` holding a JSON list: a Raft proposal, a batch of 2PC commands
  (`coordinator.commands.decode_batch`);
- `normal` starting with `{"member"`: a member's address (`txc cluster add-node`);
- `normal` holding one JSON object: a standalone node's entry, one command;
- `empty`: a new leader's no-op (or the marker `txc restore` writes, see backup.py);
- `conf_change`: a membership change (`coordinator.raft.messages.ConfChange`).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, func, select, text

from coordinator import schema
from coordinator.commands import command_from_dict, decode_batch
from coordinator.ops.common import EXIT_ATTENTION, OpsError, iso, read_node, redact
from coordinator.raft.messages import ConfChange

DEFAULT_LIMIT = 50
MAX_LIMIT = 10_000
SUMMARY_CHARS = 160


def _summary_of_command(c: dict[str, Any]) -> str:
    kind = c.get("type", "?")
    txid = c.get("txid", "?")
    extra = []
    for k in ("name", "vote", "outcome", "heuristic", "reason", "error"):
        if c.get(k):
            extra.append(str(c[k]) if k in ("name", "vote", "outcome") else f"{k}={c[k]}")
    if kind == "purge_tombstones":  # names no transaction: the horizon it moves to
        return f"{kind} forgotten before {iso(c.get('before'))}"
    return " ".join([kind, txid, *extra])


def decode_entry(index: int, term: int, kind: str, data: bytes) -> dict[str, Any]:
    """One log row as a dict: what it is, and a one-line summary."""
    out: dict[str, Any] = {"index": index, "term": term, "kind": kind, "bytes": len(data)}
    try:
        if kind == "conf_change":
            cc = ConfChange.decode(data)
            out["type"] = "conf_change"
            out["conf_change"] = {
                "op": cc.op.value,
                "node": cc.node,
                "voters": list(cc.voters),
                "learners": list(cc.learners),
            }
            if cc.op.value == "bootstrap":
                out["summary"] = f"bootstrap voters={list(cc.voters)} learners={list(cc.learners)}"
            else:
                out["summary"] = f"{cc.op.value} node {cc.node}"
        elif kind == "empty":
            out["type"] = "no-op"
            if data:
                out["detail"] = json.loads(data)
                out["summary"] = "restore marker: " + json.dumps(out["detail"])
            else:
                out["summary"] = "leader no-op"
        elif data.startswith(b'{"member"'):
            m = json.loads(data)["member"]
            out["type"] = "member"
            out["member"] = m
            out["summary"] = f"member {m['id']} at {m['url']}"
        elif data.startswith(b"["):
            cmds = [c.to_dict() for c in decode_batch(data)]
            out["type"] = "commands"
            out["commands"] = cmds
            out["summary"] = "; ".join(_summary_of_command(c) for c in cmds)
        elif data.startswith(b"{"):
            cmd = command_from_dict(json.loads(data)).to_dict()
            out["type"] = "commands"
            out["commands"] = [cmd]
            out["summary"] = _summary_of_command(cmd)
        else:
            out["type"] = "unknown"
            out["summary"] = repr(data[:60])
    except Exception as e:  # show what cannot be decoded rather than failing the listing
        out["type"] = "undecodable"
        out["error"] = f"{type(e).__name__}: {e}"
        out["summary"] = f"undecodable: {out['error']}"
    if len(out["summary"]) > SUMMARY_CHARS:
        out["summary"] = out["summary"][: SUMMARY_CHARS - 3] + "..."
    return out


def read_log(database_url: str, start: int | None, limit: int) -> dict[str, Any]:
    """Entries from index `start` on (or the last `limit` entries when `start` is None)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise OpsError(2, f"--limit must be between 1 and {MAX_LIMIT}")
    t = schema.log_entries.c
    with read_node(database_url) as conn:
        first, last, count = conn.execute(
            select(func.min(t.index), func.max(t.index), func.count())
        ).one()
        q = select(t.index, t.term, t.kind, t.data)
        if start is None:
            q = q.order_by(t.index.desc()).limit(limit)
            rows = list(reversed(conn.execute(q).all()))
        else:
            q = q.where(t.index >= start).order_by(t.index).limit(limit)
            rows = list(conn.execute(q).all())
        snap = conn.execute(select(schema.snapshot_meta.c.index)).scalar()
    return {
        "database": redact(database_url),
        "first_index": first,
        "last_index": last,
        "entries_stored": count,
        "snapshot_index": snap,
        "entries": [decode_entry(r[0], r[1], r[2], bytes(r[3])) for r in rows],
    }


def read_state(database_url: str) -> dict[str, Any]:
    """Hard state, applied index, snapshot metadata, log bounds, members, transaction counts,
    what retention left (tombstones, horizon, history), and the consistency checks the
    node's own start-up relies on."""
    lt = schema.log_entries.c
    with read_node(database_url) as conn:
        hs = conn.execute(select(schema.hard_state)).first()
        ap = conn.execute(select(schema.applied_state)).first()
        sn = conn.execute(
            select(
                schema.snapshot_meta.c.index,
                schema.snapshot_meta.c.term,
                schema.snapshot_meta.c.config,
                func.length(schema.snapshot_meta.c.data),
            )
        ).first()
        first, last, count = conn.execute(
            select(func.min(lt.index), func.max(lt.index), func.count())
        ).one()
        last_term = (
            conn.execute(select(lt.term).where(lt.index == last)).scalar()
            if last is not None
            else None
        )
        members = {
            int(r[0]): str(r[1])
            for r in conn.execute(select(schema.members.c.id, schema.members.c.url)).all()
        }
        counts = {
            str(r[0]): int(r[1])
            for r in conn.execute(
                select(schema.transactions.c.state, func.count()).group_by(
                    schema.transactions.c.state
                )
            ).all()
        }
        history_rows = conn.execute(select(func.count()).select_from(schema.history)).scalar()
        max_history = conn.execute(select(func.max(schema.history.c.index))).scalar()
        retention = _retention(conn, ap)

    vote = hs.vote if hs is not None else None
    if hs is None and sn is None and last is None:
        mode = "empty"
    elif (vote is not None and not str(vote).isdigit()) or (hs is None and last is not None):
        mode = "standalone"
    else:
        mode = "raft"
    state: dict[str, Any] = {
        "database": redact(database_url),
        "mode": mode,
        # commit_index: as the node reads it on start (at least last_applied: a commit
        # index that moved alone is not written); stored_commit_index: the row's value.
        "hard_state": (
            {
                "term": hs.term,
                "vote": hs.vote,
                "commit_index": max(hs.commit_index, ap.last_applied if ap else 0),
                "stored_commit_index": hs.commit_index,
            }
            if hs
            else None
        ),
        "applied": (
            {"last_applied": ap.last_applied, "last_applied_term": ap.last_applied_term}
            if ap
            else None
        ),
        "snapshot": (
            {"index": sn[0], "term": sn[1], "config": sn[2], "data_bytes": int(sn[3] or 0)}
            if sn
            else None
        ),
        "log": {"first_index": first, "last_index": last, "last_term": last_term, "entries": count},
        "members": {str(k): v for k, v in sorted(members.items())},
        "transactions": counts,
        "history_rows": history_rows,  # timeline rows (txc_history)
        "retention": retention,
    }
    state["problems"] = check(state, max_history)
    return state


def _retention(conn: Connection, ap: Any) -> dict[str, Any] | None:
    """What retention left (coordinator/retention.py): the tombstones of the replicated state
    (and those under the horizon, purged for every read, whose rows wait for deletion), the
    horizon, this node's history of forgotten transactions (txc_archive, as `/v1/cluster/retention`
    names it: `history_rows`), and txids that are both a record and a tombstone (a state
    the store refuses). None for a database from before retention."""
    if conn.execute(text("SELECT to_regclass('txc_tombstones')")).scalar() is None:
        return None
    tb, t = schema.tombstones.c, schema.transactions.c
    horizon = float(getattr(ap, "tombstone_horizon", 0.0) or 0.0) if ap is not None else 0.0
    live, purged = conn.execute(
        select(
            func.count().filter(tb.forgotten_at >= horizon),
            func.count().filter(tb.forgotten_at < horizon),
        )
    ).one()
    both = conn.execute(
        select(func.count())
        .select_from(schema.tombstones.join(schema.transactions, tb.txid == t.txid))
        .where(tb.forgotten_at >= horizon)
    ).scalar()
    has_archive = conn.execute(text("SELECT to_regclass('txc_archive')")).scalar() is not None
    archived = (
        conn.execute(select(func.count()).select_from(schema.archive)).scalar()
        if has_archive
        else 0
    )
    return {
        "tombstones": int(live or 0),
        "purged_tombstones": int(purged or 0),
        "tombstone_horizon": iso(horizon or None),
        "history_rows": int(archived or 0),
        "record_and_tombstone": int(both or 0),
    }


def check(state: dict[str, Any], max_history: int | None) -> list[str]:
    """What would stop the node from starting, or would be lost or repeated."""
    problems: list[str] = []
    hs, ap, sn, lg = state["hard_state"], state["applied"], state["snapshot"], state["log"]
    applied = ap["last_applied"] if ap else 0
    snap_index = sn["index"] if sn else 0
    last = lg["last_index"] or 0
    durable_end = max(last, snap_index)
    if state["mode"] == "standalone":
        if applied != last:
            problems.append(
                f"standalone node: last_applied {applied} != last log index {last} "
                "(the node refuses to start)"
            )
    elif state["mode"] == "raft":
        if hs and hs["stored_commit_index"] > durable_end:
            problems.append(
                f"commit index {hs['stored_commit_index']} is ahead of the stored log "
                f"({durable_end})"
            )
        # `applied` ahead of the stored commit index is normal: a commit index that moved
        # alone is not written, and the node reads it as at least last_applied.
        if applied > durable_end:
            problems.append(f"applied {applied} is ahead of the stored log ({durable_end})")
        if lg["first_index"] is not None and lg["first_index"] > snap_index + 1:
            problems.append(
                f"gap: the log starts at {lg['first_index']} but the snapshot ends at {snap_index}"
            )
    if lg["entries"] and lg["first_index"] is not None:
        expected = lg["last_index"] - lg["first_index"] + 1
        if expected != lg["entries"]:
            problems.append(f"the log has holes: {lg['entries']} rows for {expected} indexes")
    ret = state.get("retention")
    if ret and ret["record_and_tombstone"]:
        problems.append(
            f"{ret['record_and_tombstone']} txid(s) have both a record and a tombstone "
            "(the node refuses to read them)"
        )
    if max_history is not None and max_history > max(applied, snap_index):
        problems.append(
            f"the timeline has entries up to {max_history}, beyond last_applied {applied}"
        )
    return problems


def state_exit_code(state: dict[str, Any]) -> int:
    return EXIT_ATTENTION if state["problems"] else 0
