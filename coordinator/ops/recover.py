"""`txc recover`: resolve a participant's in-doubt prepared transactions (PostgreSQL, or
MariaDB/MySQL XA branches when the database URL is a mysql:// or mariadb:// one).

This wraps the SDK's own recovery (`participant_sdk.recovery.resolve_in_doubt` over a
`PgResourceManager` or a `MySqlResourceManager`), so the CLI and a running participant
apply exactly the same rules (COMMIT/ROLLBACK PREPARED below read XA COMMIT/ROLLBACK on
MariaDB, and pg_prepared_xacts reads XA RECOVER):

- prepared and recorded 'prepared': ask the coordinator; commit -> COMMIT PREPARED,
  abort -> ROLLBACK PREPARED, pending -> leave it;
- prepared without a record (died before enlisting): roll back without asking;
- prepared with a record 'committed'/'aborted' (a phase 2 that did not finish): finish it;
- recorded 'prepared' with nothing prepared: it was committed; fix the record.

The dry run (the default) does not ask `/outcome`: asking about a transaction the
coordinator does not know makes a durable ABORT (presumed abort, DESIGN §3.3). It reads
`GET /v1/transactions/{txid}` instead and says what `--apply` would get: the outcome when
decided; ABORT when the transaction is unknown or expired (the answer `/outcome` will give,
and make durable); pending otherwise. `--apply` asks `/outcome` through the SDK.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import ArgumentError, DBAPIError

from coordinator.ops.common import (
    EXIT_ATTENTION,
    EXIT_IN_DOUBT,
    Coordinator,
    OpsError,
    parse_iso,
    participant_engine,
)
from participant_sdk import mysql_record
from participant_sdk.errors import CoordinatorUnavailable
from participant_sdk.headers import parse_gid, validate_participant_name
from participant_sdk.mysql_resource import MySqlResourceManager, is_mysql
from participant_sdk.mysql_xid import format_id_for, parse_recover_row
from participant_sdk.participant import ParticipantBase
from participant_sdk.pg_resource import PgResourceManager
from participant_sdk.recovery import MAX_IN_DOUBT_PER_PASS, RecoveryReport, resolve_in_doubt

UNUSED_PUBLIC_URL = "http://recover.invalid"  # the CLI serves no protocol endpoints

# Actions that leave the database as it should be (after --apply).
_SETTLED = {"none", "committed", "rolled_back", "rolled_back_orphan", "changed_meanwhile"}

_NOTES = {
    "would_commit": "COMMIT PREPARED",
    "would_abort": "ROLLBACK PREPARED",
    "would_abort_orphan": "ROLLBACK PREPARED (prepared without a record: never enlisted)",
    "left_pending": "leave prepared (the transaction is not decided yet)",
    "committed": "committed",
    "rolled_back": "rolled back",
    "rolled_back_orphan": "rolled back (never enlisted)",
    "changed_meanwhile": "a live participant finished it meanwhile",
    "none": "nothing to do",
}


class _Peek:
    """Stands in for the SDK's coordinator client during a dry run: answers `outcome()` from
    a read of the transaction, so a dry run never makes a presumed abort durable."""

    def __init__(self, coordinator: Coordinator, notes: dict[str, str]) -> None:
        self.coordinator = coordinator
        self.notes = notes

    def outcome(self, txid: str) -> str:
        try:
            t = self.coordinator.transaction(txid)
        except OpsError as e:
            raise CoordinatorUnavailable(str(e)) from e
        if t is None:
            self.notes[txid] = "unknown to the coordinator: presumed abort"
            return "abort"
        if t.get("outcome"):
            return str(t["outcome"])
        expires = parse_iso(t.get("expires_at"))
        if expires is not None and expires <= time.time():
            self.notes[txid] = f"{t['state']} and expired: asking aborts it"
            return "abort"
        self.notes[txid] = f"coordinator: {t['state']}"
        return "pending"


class _DryRunManager(PgResourceManager):
    """The SDK's resource manager with the read-only coordinator stand-in."""

    peek: _Peek

    def coordinator_for(self, url: str | None = None) -> Any:
        return self.peek


class _DryRunMySqlManager(MySqlResourceManager):
    """The same for a MariaDB/MySQL participant."""

    peek: _Peek

    def coordinator_for(self, url: str | None = None) -> Any:
        return self.peek


# How the notes name the statements on MariaDB/MySQL.
_XA_WORDS = {"COMMIT PREPARED": "XA COMMIT", "ROLLBACK PREPARED": "XA ROLLBACK"}


@dataclass
class RecoverResult:
    participant: str
    database: str
    coordinator: str
    dry_run: bool
    report: RecoveryReport
    notes: dict[str, str] = field(default_factory=dict)
    other_gids: list[str] = field(default_factory=list)  # txc gids of other participants
    truncated: bool = False
    xa: bool = False  # a MariaDB/MySQL participant (XA branches)

    def exit_code(self) -> int:
        actions = [i.action for i in self.report.items]
        errors = [i for i in self.report.items if i.action == "error"]
        if errors:
            if any("coordinator_unavailable" in (i.error or "") for i in errors):
                return 5
            return 1
        if self.dry_run:
            if any(a.startswith("would_") for a in actions):
                return EXIT_ATTENTION
        elif any(a not in _SETTLED and a != "left_pending" for a in actions):
            return 1  # e.g. "commit_answered_409:heuristic_abort"
        if "left_pending" in actions or self.truncated:
            return EXIT_IN_DOUBT
        return 0

    def to_dict(self) -> dict[str, Any]:
        items = []
        for i in self.report.items:
            d = {
                "txid": i.txid,
                "gid": i.gid,
                "prepared": i.prepared,
                "record_state": i.record_state,
                "outcome": i.outcome,
                "action": i.action,
                "note": self.note(i.txid, i.action, i.prepared),
                "error": i.error,
            }
            items.append(d)
        return {
            "participant": self.participant,
            "database": self.database,
            "coordinator": self.coordinator,
            "dry_run": self.dry_run,
            "items": items,
            "other_participants_gids": self.other_gids,
            "truncated": self.truncated,
            "exit_code": self.exit_code(),
        }

    def note(self, txid: str, action: str, prepared: bool) -> str:
        if action == "would_commit" and not prepared:
            base = "mark the record committed (the work was already committed)"
        elif action == "error":
            base = "failed"
        else:
            base = _NOTES.get(action, action)
        if self.xa:
            for pg_word, xa_word in _XA_WORDS.items():
                base = base.replace(pg_word, xa_word)
        extra = self.notes.get(txid)
        return f"{base}; {extra}" if extra else base


def _other_gids(engine: Engine, name: str) -> list[str]:
    if is_mysql(engine):
        return _other_xids(engine, name)
    with engine.connect() as conn:
        gids = conn.execute(
            text(
                "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() "
                "AND gid LIKE 'txc:%' ORDER BY prepared LIMIT 1000"
            )
        ).scalars()
        out = []
        for gid in gids:
            parsed = parse_gid(gid)
            if parsed is not None and parsed[0] != name:
                out.append(gid)
        return out


def _other_xids(engine: Engine, name: str) -> list[str]:
    """The txc branches in this participant's database (by formatID) of other names."""
    fmt = format_id_for(str(engine.url.database))
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("XA RECOVER").all()
    out = []
    for row in rows:
        xid = parse_recover_row(tuple(row))
        if xid and xid.format_id == fmt and xid.txid is not None and xid.bqual != name:
            out.append(xid.display)
    return out[:1000]


def _check_participant_db(engine: Engine) -> None:
    with engine.connect() as conn:
        if is_mysql(engine):
            exists: object = True if mysql_record.has_table(conn) else None
        else:
            exists = conn.execute(text("SELECT to_regclass('txc_participant_record')")).scalar()
    if exists is None:
        raise OpsError(
            2,
            "this database has no txc_participant_record table: is it a participant's "
            "database? (the SDK creates it: create_tables() or the 'participant' migrations)",
        )


def recover(
    participant: str,
    database_url: str,
    coordinator_urls: str,
    *,
    token: str | None,
    apply: bool,
    participant_token: str | None = None,
) -> RecoverResult:
    try:
        validate_participant_name(participant)
    except ValueError as e:
        raise OpsError(2, str(e)) from None
    # A dry run connects read-only: it cannot change the participant's database.
    try:
        engine = participant_engine(database_url, read_only=not apply)
    except ArgumentError as e:
        raise OpsError(2, f"--database-url: {e}") from None
    xa = is_mysql(engine)
    coord = Coordinator(coordinator_urls, token)
    seeds = ",".join(coord.urls)
    try:
        try:
            _check_participant_db(engine)
        except DBAPIError as e:
            raise OpsError(5, f"cannot reach the participant database: {e.orig}") from None
        notes: dict[str, str] = {}
        rm: ParticipantBase
        if apply:
            kind = MySqlResourceManager if xa else PgResourceManager
            try:
                # With the participant's own secret, the outcome queries are signed as the
                # participant and only signed answers count (a coordinator with a registry);
                # without, a bearer token asks and the answers are taken as they come.
                rm = kind(
                    participant, engine, public_url=UNUSED_PUBLIC_URL, coordinator_url=seeds,
                    token=token, participant_token=participant_token or None,
                )  # fmt: skip
            except ValueError as e:
                raise OpsError(2, f"--coordinator-url: {e}") from None
        else:
            dry_kind = _DryRunMySqlManager if xa else _DryRunManager
            dry = dry_kind(participant, engine, public_url=UNUSED_PUBLIC_URL)
            dry.peek = _Peek(coord, notes)
            rm = dry
        try:
            report = resolve_in_doubt(rm, dry_run=not apply)
        except DBAPIError as e:
            raise OpsError(5, f"cannot read the participant database: {e.orig}") from None
        finally:
            rm.close()
        return RecoverResult(
            participant,
            database_url,
            seeds,
            not apply,
            report,
            notes,
            _other_gids(engine, participant),
            truncated=len(report.items) >= MAX_IN_DOUBT_PER_PASS,
            xa=xa,
        )
    finally:
        coord.close()
        engine.dispose()
