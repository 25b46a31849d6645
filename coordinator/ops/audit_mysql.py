"""What `txc audit` reads from a MariaDB/MySQL participant's database: its prepared XA
branches (`XA RECOVER`, filtered to this participant and this database by bqual and
formatID, see participant_sdk/mysql_xid.py) and its SDK records.

Why a module of its own: the PostgreSQL reading (`audit._read_local`) leans on
pg_prepared_xacts, which knows each gid's database and prepare time. `XA RECOVER` knows
neither: a branch's "prepared since" is taken from its 'prepared' record (written just after
XA PREPARE); a branch without a record (a participant that died in between) has no age, and
so always counts as a problem, like any finding without a `since`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, bindparam, text

from coordinator.ops.common import OpsError
from participant_sdk import mysql_record
from participant_sdk.mysql_xid import ours

if TYPE_CHECKING:
    from coordinator.ops.audit import Local

# Seconds since the epoch of a DATETIME(6) the SDK wrote in UTC (UTC_TIMESTAMP(6)).
_EPOCH = "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {col}) / 1000000"
_T = mysql_record.TABLE_NAME
_RECORDS_OF = text(
    f"SELECT txid, state, {_EPOCH.format(col='updated_at')} FROM {_T} "
    "WHERE participant = :n AND txid IN :t"
).bindparams(bindparam("t", expanding=True))


def read_local(
    engine: Engine, name: str, since_s: float | None, max_records: int, chunk: int
) -> dict[str, Local]:
    from coordinator.ops.audit import Local

    out: dict[str, Local] = {}
    with engine.connect() as conn:
        if not mysql_record.has_table(conn):
            raise OpsError(2, f"{name}: the database has no {_T} table (not a participant?)")
        rows = conn.exec_driver_sql("XA RECOVER").all()
        for txid in ours((tuple(r) for r in rows), name, str(engine.url.database)):
            out[txid] = Local(prepared=True)
        q = (
            f"SELECT txid, state, {_EPOCH.format(col='updated_at')}, "
            f"{_EPOCH.format(col='created_at')} FROM {_T} WHERE participant = :n"
        )
        params: dict[str, Any] = {"n": name, "lim": max_records + 1}
        if since_s is not None:
            q += " AND updated_at >= UTC_TIMESTAMP(6) - INTERVAL :us MICROSECOND"
            params["us"] = int(since_s * 1_000_000)
        recs = conn.execute(text(q + " ORDER BY updated_at DESC LIMIT :lim"), params).all()
        if len(recs) > max_records:
            raise OpsError(1, f"{name}: more than {max_records} records; narrow with --since")
        for txid, state, updated, created in recs:
            loc = out.setdefault(txid, Local())
            loc.record, loc.record_updated_at = state, float(updated)
            if loc.prepared and state == "prepared":
                loc.prepared_at = float(created)
        # Prepared branches whose records the --since window left out: their age still counts.
        ageless = [t for t, loc in out.items() if loc.prepared and loc.record is None]
        for txid, (state, updated) in records_of(engine, name, ageless, chunk).items():
            loc = out[txid]
            loc.record, loc.record_updated_at = state, updated
            if state == "prepared":
                loc.prepared_at = updated
    return out


def records_of(
    engine: Engine, name: str, txids: list[str], chunk: int
) -> dict[str, tuple[str, float]]:
    out: dict[str, tuple[str, float]] = {}
    with engine.connect() as conn:
        for i in range(0, len(txids), chunk):
            for txid, state, at in conn.execute(
                _RECORDS_OF, {"n": name, "t": txids[i : i + chunk]}
            ):
                out[txid] = (state, float(at))
    return out
