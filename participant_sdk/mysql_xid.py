"""The XA transaction id of a MariaDB/MySQL participant's branch, and reading `XA RECOVER`.

Why not the PostgreSQL gid (`txc:<name>:<txid>`, up to 199 bytes): an XA xid is three parts,
gtrid and bqual of at most 64 bytes each and a formatID (a non-negative 32-bit integer), and
a longer part is a syntax error, not a clear one. So a branch's xid is
- gtrid  = "txc:" + txid (a coordinator txid is a 36-character UUID; longer txids are refused
  with `invalid_txid` before any work),
- bqual  = the participant name (at most 64 bytes, as `MAX_PARTICIPANT_NAME`),
- formatID = a 31-bit hash of the participant's database name.

Why the database in the formatID: `XA RECOVER` lists the prepared branches of the whole
server, without saying which database they touched, while the SDK's record lives in one
database. Two participants of the same name in two databases of one server would otherwise
each see the other's branches as "prepared, no record" (an orphan) and roll them back.

Every part is written as a hex literal (`X'...'`): nothing in it needs quoting.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from participant_sdk.headers import is_valid_txid, validate_participant_name, validate_txid

XID_PART_MAX_BYTES = 64  # MariaDB/MySQL: gtrid and bqual are at most 64 bytes each
GTRID_PREFIX = "txc:"
MAX_MYSQL_TXID = XID_PART_MAX_BYTES - len(GTRID_PREFIX)  # 60 (a UUID txid is 36)
FORMAT_ID_MASK = 0x7FFFFFFF  # formatID is a non-negative signed 32-bit integer
XA_RECOVER_COLUMNS = 4  # formatID, gtrid_length, bqual_length, data


@dataclass(frozen=True)
class Xid:
    gtrid: str
    bqual: str
    format_id: int

    @property
    def sql(self) -> str:
        """The xid as XA statements take it: `X'<gtrid>',X'<bqual>',<formatID>`."""
        return f"X'{self.gtrid.encode().hex()}',X'{self.bqual.encode().hex()}',{self.format_id}"

    @property
    def display(self) -> str:
        """Readable form (what `XA RECOVER FORMAT='SQL'` shows, with plain quotes)."""
        return f"'{self.gtrid}','{self.bqual}',{self.format_id}"

    @property
    def txid(self) -> str | None:
        """The txid a txc gtrid carries, or None for anyone else's gtrid."""
        if not self.gtrid.startswith(GTRID_PREFIX):
            return None
        txid = self.gtrid[len(GTRID_PREFIX) :]
        return txid if is_valid_txid(txid) else None


def format_id_for(database: str) -> int:
    """The formatID of every branch of participants living in `database` (see module doc)."""
    if not database:
        raise ValueError("the participant's database URL must name a database")
    return zlib.crc32(("txc-db:" + database).encode()) & FORMAT_ID_MASK


def fits(txid: str) -> bool:
    return is_valid_txid(txid) and len(txid) <= MAX_MYSQL_TXID


def make_xid(participant: str, txid: str, database: str) -> Xid:
    """The xid of `participant`'s branch of `txid`; ValueError for a txid too long for XA."""
    validate_txid(txid)
    if len(txid) > MAX_MYSQL_TXID:
        raise ValueError(
            f"a MariaDB/MySQL participant takes transaction ids of at most {MAX_MYSQL_TXID} "
            f"characters (XA's gtrid is at most {XID_PART_MAX_BYTES} bytes), got {len(txid)}"
        )
    return Xid(GTRID_PREFIX + txid, validate_participant_name(participant), format_id_for(database))


def parse_recover_row(row: Sequence[object]) -> Xid | None:
    """One row of plain `XA RECOVER` (formatID, gtrid_length, bqual_length, data: gtrid and
    bqual concatenated) as an Xid; None when it is not text (not one of ours)."""
    assert len(row) == XA_RECOVER_COLUMNS, row
    fmt, glen, blen, data = row
    raw = data if isinstance(data, bytes) else str(data).encode()
    g, b = int(glen), int(blen)  # type: ignore[call-overload]
    if len(raw) != g + b:
        return None
    try:
        return Xid(raw[:g].decode(), raw[g : g + b].decode(), int(fmt))  # type: ignore[call-overload]
    except UnicodeDecodeError:
        return None


def ours(rows: Iterable[Sequence[object]], participant: str, database: str) -> dict[str, Xid]:
    """txid -> xid of `participant`'s branches among `XA RECOVER`'s rows."""
    fmt = format_id_for(database)
    out: dict[str, Xid] = {}
    for row in rows:
        xid = parse_recover_row(row)
        if xid is None or xid.format_id != fmt or xid.bqual != participant:
            continue
        txid = xid.txid
        if txid is not None:
            out[txid] = xid
    return out
