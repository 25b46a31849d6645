"""PostgreSQL resource manager: a participant whose work is a local PostgreSQL transaction,
made durable-but-undecided with `PREPARE TRANSACTION` (DESIGN §6).

Why *eager* prepare (at the end of the business request, before its response, then enlist
with `vote: "yes"`): no database connection or transaction is held open between the business
request and the coordinator's phase 2, the coordinator skips phase 1 for this participant,
and a crash of this process loses nothing (the prepared transaction survives in PostgreSQL;
recovery resolves it). The price: a request's row locks are held until phase 2 arrives, and
one participant can do the work of one txid in one request only (a second request for the
same txid is refused with 409 `already_prepared`).

Per-request sequence (`work()`), two PostgreSQL transactions (`pg_fastpath` has the SQL):
1. the work transaction's first statement reads the record: a txid aborted (or already done)
   here is refused before the application runs;
2. the application does its work on that transaction;
3. still inside it: take the txid lock (a session advisory lock: it outlives the PREPARE),
   PREPARE TRANSACTION 'txc:<name>:<txid>' (its command status says whether it prepared);
4. one statement inserts the 'prepared' record and releases the lock. If a record appeared
   meanwhile (an abort won the race, or another request of this txid finished first), the
   lock stays held until our PREPARE is rolled back, and the request is refused;
5. enlist with the coordinator (vote yes). Refused (4xx) -> abort (record 'aborted',
   ROLLBACK PREPARED), 409. Unknown (network/5xx) -> keep it prepared (in doubt), 503.

Why the lock spans 3-4: the gid of a refused second request equals the first one's, so while
it is prepared nobody else may act on that gid; every other step that acts on a prepared
transaction holds the same lock, except the phase-2 commit below.

Phase 2 commit, two PostgreSQL transactions: the record moves 'prepared' -> 'committed' in
one conditional update (the decision: an abort moves it to 'aborted' first, so exactly one
wins), then COMMIT PREPARED. A crash in between leaves 'committed' + prepared, which a
repeated commit or recovery finishes. Anything but a plain 'prepared' record (a repeat, a
conflict, nothing known) takes the careful path under the txid lock. The rules behind all of
this: a prepared transaction is rolled back only after its record says 'aborted' and
committed only after it says 'committed' (or, for records written by older versions, with
'prepared' and nothing prepared meaning committed).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.engine import RootTransaction

from participant_sdk import pg_fastpath as fast
from participant_sdk import record
from participant_sdk.client import TxcClient
from participant_sdk.errors import (
    EnlistmentUncertain,
    ParticipantError,
    TxcError,
    WorkRefused,
)
from participant_sdk.headers import gid_prefix, make_gid, parse_gid, validate_txid
from participant_sdk.participant import ParticipantBase, ProtocolReply
from participant_sdk.recovery import MAX_IN_DOUBT_PER_PASS, RECOVERY_INTERVAL_S, InDoubt

log = logging.getLogger("txc.sdk.pg")

MAX_RACE_RECHECKS = 3  # re-reads when the record or the prepared transaction changed meanwhile
# While another session finishes a prepared transaction (e.g. a concurrent repeated commit),
# COMMIT PREPARED answers "busy"; that lasts as long as one commit record's fsync.
MAX_BUSY_WAITS = 100
BUSY_WAIT_S = 0.01
SQLSTATE_PREREQUISITE = "55000"  # e.g. prepared transactions are disabled

_PREPARED_SQL = text(
    "SELECT transaction::text::bigint FROM pg_prepared_xacts "
    "WHERE gid = :gid AND database = current_database()"
)
_OWNED_SQL = text(
    "SELECT gid FROM pg_prepared_xacts "
    "WHERE database = current_database() AND left(gid, length(:prefix)) = :prefix "
    "AND prepared <= now() - make_interval(secs => :min_age_s) "
    "ORDER BY prepared LIMIT :limit"
)


@dataclass(frozen=True)
class PgWork:
    """What the application's code gets inside a joined request: the connection to do its
    work on (do not commit or roll it back: the SDK owns that transaction)."""

    txid: str | None  # None for a local (non-global) transaction, see join(required=False)
    participant: str
    gid: str | None
    connection: Connection


class PgResourceManager(ParticipantBase):
    """A PostgreSQL participant. `engine` points at the participant's own database, whose
    server must have `max_prepared_transactions > 0`, and which holds the record table
    (`create_tables()` or the `participant` Alembic branch)."""

    supports_deferred = True  # work() prepares before the request's answer

    def __init__(
        self,
        name: str,
        engine: Engine,
        *,
        public_url: str,
        coordinator_url: str | None = None,
        token: str | None = None,
        prefix: str = "/txc",
        coordinator: TxcClient | None = None,
        recovery_interval_s: float = RECOVERY_INTERVAL_S,
        participant_token: str | Sequence[str] | None = None,
        deferred_enlistment: bool = False,
        development: bool = False,
    ) -> None:
        if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
            raise ValueError(
                "PgResourceManager needs a PostgreSQL engine on psycopg 3 "
                "(postgresql+psycopg://...)"
            )
        super().__init__(
            name,
            public_url=public_url,
            coordinator_url=coordinator_url,
            token=token,
            prefix=prefix,
            coordinator=coordinator,
            recovery_interval_s=recovery_interval_s,
            participant_token=participant_token,
            development=development,
            deferred_enlistment=deferred_enlistment,
        )
        self.engine = engine
        self._schema_ok = False
        self._xid_table: bool | None = None  # see _has_xid_table

    def create_tables(self) -> None:
        record.create_tables(self.engine)

    def max_prepared_transactions(self) -> int:
        """The server's setting; 0 means PREPARE TRANSACTION is disabled."""
        with self.engine.connect() as conn:
            return int(conn.execute(text("SHOW max_prepared_transactions")).scalar_one())

    # -- the application's work -----------------------------------------------------------------

    @contextlib.contextmanager
    def work(
        self, txid: str, coordinator_url: str | None = None, deferred: bool = False
    ) -> Iterator[PgWork]:
        validate_txid(txid)
        if deferred:
            self.check_deferred()
        self._check_schema()
        gid = make_gid(self.name, txid)
        self.coordinator_for(coordinator_url)  # fail before any work when none is known
        stored_url = None  # recovery asks the configured coordinator, never a caller's
        with self.engine.connect() as conn:
            trans = conn.begin()
            driver = fast.driver_of(conn.connection.dbapi_connection)
            try:
                # The work transaction's first statement (no transaction of its own).
                isolation, existing = fast.work_start(driver, self.name, txid)
            except BaseException:
                trans.rollback()
                raise
            if isolation != fast.READ_COMMITTED:
                trans.rollback()
                raise ParticipantError(
                    f"the participant's work must run at READ COMMITTED, not {isolation} "
                    "(the engine's or the server's default isolation level)",
                    code="isolation_not_supported",
                )
            if existing is not None:
                trans.rollback()
                raise self._refusal(existing)
            try:
                yield PgWork(txid, self.name, gid, conn)
            except BaseException:
                if trans.is_active:
                    trans.rollback()
                raise
            if not trans.is_active:
                raise WorkRefused(
                    "the application ended the SDK's transaction", code="transaction_ended"
                )
            self._prepare(conn, driver, trans, txid, gid, stored_url)
        if deferred:
            # The client brings our enlistment to the commit. If it never does, the
            # prepared work follows the transaction's outcome through recovery (which asks).
            return
        # The connection is back in the pool: nothing is held across the network call.
        try:
            self.enlist(txid, coordinator_url, "yes")
        except TxcError as e:
            if self.enlistment_definitely_failed(e):
                self.abort(txid)
                raise WorkRefused(
                    f"the coordinator refused the enlistment: {e}", code="enlistment_refused"
                ) from e
            raise EnlistmentUncertain(
                f"work prepared but the enlistment's fate is unknown ({e}); "
                "the coordinator's outcome will resolve it"
            ) from e

    def _has_xid_table(self, conn: Connection) -> bool:
        """Whether migration p0004 has run (looked up once): recovery, and `txc recover`,
        also run against an older database, where no record has an xid."""
        if self._xid_table is None:
            self._xid_table = inspect(conn).has_table(record.XID_TABLE_NAME)
        return self._xid_table

    def _check_schema(self) -> None:
        """Once per process: the SDK's tables are up to date. Why before any work: a request
        whose record cannot be written fails only after its PREPARE, leaving prepared work
        behind on every request (holding locks and prepared-transaction slots)."""
        if self._schema_ok:
            return
        with self.engine.connect() as conn:
            missing = [t for t in record.TABLE_NAMES if not inspect(conn).has_table(t)]
        self._xid_table = record.XID_TABLE_NAME not in missing
        if missing:
            raise ParticipantError(
                f"the participant's tables are out of date (missing: {', '.join(missing)}): "
                "run `txc migrate --branch participant` or create_tables()",
                code="schema_out_of_date",
                status=503,
            )
        self._schema_ok = True

    @contextlib.contextmanager
    def local_work(self) -> Iterator[PgWork]:
        with self.engine.begin() as conn:
            yield PgWork(None, self.name, None, conn)

    def _prepare(
        self,
        conn: Connection,
        driver: fast.Driver,
        trans: RootTransaction,
        txid: str,
        gid: str,
        coordinator_url: str | None,
    ) -> None:
        status = driver.info.transaction_status
        if status != TransactionStatus.INTRANS:
            trans.rollback()
            if status == TransactionStatus.IDLE:  # committed behind the SDK's back
                raise WorkRefused(
                    "the application ended the SDK's transaction", code="transaction_ended"
                )
            # Typically: the application swallowed a failed statement.
            raise WorkRefused(
                "the work's transaction had failed; nothing was prepared", code="work_failed"
            )
        try:
            existing, xid = fast.lock_and_state(driver, self.name, txid)
        except psycopg.Error as e:
            # E.g. a statement timeout while waiting: drop the session, and any lock with it.
            conn.invalidate()
            raise WorkRefused(
                f"could not take the transaction's lock; nothing was prepared ({e})",
                code="work_failed",
            ) from e
        locked = True
        try:
            if existing is not None:
                trans.rollback()
                raise self._refusal(existing)
            try:
                prepared = fast.prepare_transaction(driver, gid)
            except psycopg.Error as e:
                trans.rollback()
                if isinstance(e, pg_errors.DuplicateObject):
                    raise WorkRefused(
                        f"transaction {txid} is already prepared here by another request",
                        code="already_prepared",
                    ) from e
                if e.sqlstate == SQLSTATE_PREREQUISITE:
                    raise ParticipantError(
                        f"PREPARE TRANSACTION failed (is max_prepared_transactions > 0?): {e}",
                        code="prepare_unavailable",
                        status=503,
                    ) from e
                raise
            # Nothing is left open at the server; this only closes SQLAlchemy's transaction
            # (the driver sends nothing when the server is idle).
            trans.commit()
            conn.execution_options(isolation_level="AUTOCOMMIT")
            if not prepared:
                # PREPARE on a transaction that had already failed is a plain ROLLBACK.
                raise WorkRefused(
                    "the work's transaction had failed; nothing was prepared", code="work_failed"
                )
            if fast.record_prepared_and_unlock(driver, self.name, txid, gid, coordinator_url, xid):
                locked = False
                return
            # A record got there first (an abort, or an earlier request of this txid that has
            # finished): undo our PREPARE while still holding the lock, then refuse.
            fast.finish_prepared(driver, "ROLLBACK", gid)
            raise self._refusal(fast.record_state(driver, self.name, txid) or "aborted")
        finally:
            if locked:
                self._release(conn, driver, txid)

    def _release(self, conn: Connection, driver: fast.Driver, txid: str) -> None:
        try:
            if not driver.autocommit:
                conn.execution_options(isolation_level="AUTOCOMMIT")
            fast.unlock(driver, self.name, txid)
        except Exception:
            log.exception("could not release the txid lock of %s; dropping the connection", txid)
            conn.invalidate()

    @staticmethod
    def _refusal(state: str) -> WorkRefused:
        if state == "aborted":
            return WorkRefused("the transaction was aborted here", code="aborted")
        return WorkRefused(
            "this participant already did its work for the transaction (one request per "
            "participant per transaction)",
            code="already_prepared",
        )

    # -- PostgreSQL helpers ---------------------------------------------------------------------

    @staticmethod
    def _prepared_xid(conn: Connection, gid: str) -> int | None:
        """The xid of the transaction prepared as `gid`, or None when there is none."""
        xid = conn.execute(_PREPARED_SQL, {"gid": gid}).scalar_one_or_none()
        return None if xid is None else int(xid)

    def _is_prepared(self, conn: Connection, gid: str) -> bool:
        return self._prepared_xid(conn, gid) is not None

    def _prepared_here(self, conn: Connection, rec: record.Record | None, gid: str) -> int | None:
        """The xid of the prepared transaction `gid` when it is the one `rec` is about (or
        `rec` does not say), else None. Under the txid lock.

        Why: every request of a txid prepares under the same gid, so once the recorded
        transaction is committed the gid is free, and a duplicate request that missed the
        record (its check's snapshot predates the lock it waited for) and was held up past
        the whole 2PC can PREPARE it again before its record insert refuses it and rolls
        back. If its process dies in between, a prepared `gid` sits next to a 'committed'
        record, which otherwise means "the commit was interrupted: finish it", and the
        duplicate's work would be committed. The record's xid tells them apart; a stray one
        (no live request holds it: we have the lock it prepared under) is rolled back."""
        xid = self._prepared_xid(conn, gid)
        if xid is None or rec is None or not self._has_xid_table(conn):
            return xid
        recorded = record.recorded_xid(conn, self.name, rec.txid)
        if recorded is None or recorded == xid:
            return xid
        log.warning(
            "rolling back %s: prepared by transaction %s, but the record of %s is about %s "
            "(a request that died before its record check refused it)",
            gid,
            xid,
            rec.txid,
            recorded,
        )
        self._rollback_prepared(conn, gid)
        return None

    @staticmethod
    def _finish(conn: Connection, verb: str, gid: str) -> bool:
        """COMMIT/ROLLBACK PREPARED on an autocommit connection; False when it no longer
        exists (someone finished it). Waits out a concurrent finisher ("busy")."""
        driver = fast.driver_of(conn.connection.dbapi_connection)
        for _ in range(MAX_BUSY_WAITS):
            try:
                return fast.finish_prepared(driver, verb, gid)
            except fast.PreparedBusy:
                time.sleep(BUSY_WAIT_S)
        raise RuntimeError(f"{verb} PREPARED {gid}: still busy after {MAX_BUSY_WAITS} waits")

    def _rollback_prepared(self, conn: Connection, gid: str) -> None:
        self._finish(conn, "ROLLBACK", gid)

    def _aborted_here(
        self, conn: Connection, rec: record.Record | None, prepared: bool, gid: str
    ) -> bool:
        """Whether the record says this participant aborted; if so, finish that abort (roll
        back the transaction if it is still prepared). Under the txid lock."""
        if rec is None or rec.state != "aborted":
            return False
        if prepared:
            self._rollback_prepared(conn, gid)
        return True

    # -- protocol handlers (coordinator -> participant) -----------------------------------------

    def _reply(self, txid: str, state: str) -> ProtocolReply:
        return ProtocolReply(200, {"txid": txid, "participant": self.name, "state": state})

    def prepare(self, txid: str) -> ProtocolReply:
        """Normally skipped (we enlist with vote yes); answers consistently when asked."""
        gid = make_gid(self.name, txid)
        for _ in range(MAX_RACE_RECHECKS):
            with record.txid_lock(self.engine, self.name, txid) as conn:
                rec = record.get(conn, self.name, txid)
                xid = self._prepared_here(conn, rec, gid)
                prepared = xid is not None
                if self._aborted_here(conn, rec, prepared, gid):
                    return ProtocolReply(409, {"vote": "no", "reason": "aborted here"})
                if rec is not None:
                    return ProtocolReply(200, {"vote": "yes"})
                if not prepared:
                    # Voting NO is a local abort: remember it so late work is refused.
                    if not record.claim_abort(conn, self.name, txid, gid):
                        continue
                    return ProtocolReply(
                        409, {"vote": "no", "reason": "no prepared work for this transaction"}
                    )
                # Prepared, not recorded (its request died before recording it): adopt it.
                if record.insert_if_absent(conn, self.name, txid, "prepared", gid):
                    assert xid is not None
                    record.remember_xid(conn, self.name, txid, xid)
                    return ProtocolReply(200, {"vote": "yes"})
                # A request's own record landed meanwhile: look again.
        raise RuntimeError(f"prepare of {gid}: record kept changing")

    def commit(self, txid: str) -> ProtocolReply:
        gid = make_gid(self.name, txid)
        # The common case, without the txid lock: the record says 'prepared'; decide in it.
        with fast.autocommit_driver(self.engine) as driver:
            if fast.claim_commit(driver, self.name, txid):
                try:
                    # False: nothing prepared, i.e. committed before a crash (a 'prepared'
                    # record's transaction is never rolled back without 'aborted' first).
                    fast.finish_prepared(driver, "COMMIT", gid)
                except fast.PreparedBusy:
                    pass  # being committed by a repeat; the record already says committed
                return self._reply(txid, "committed")
        return self._commit_carefully(txid, gid)

    def commit_many(self, txids: list[str]) -> dict[str, ProtocolReply]:
        """`commit` for a batch: the records of every plain 'prepared' txid move to
        'committed' in one statement (one PostgreSQL transaction instead of one each), then
        each is COMMIT PREPARED; the rest take the careful path one by one. The rule holds
        per txid as in `commit`: its record says 'committed' before its COMMIT PREPARED. A
        failure part-way leaves 'committed' records with prepared work, which a repeat (the
        careful path) or recovery finishes."""
        assert len(set(txids)) == len(txids), "distinct txids"
        replies: dict[str, ProtocolReply] = {}
        with fast.autocommit_driver(self.engine) as driver:
            claimed = fast.claim_commits(driver, self.name, txids)
            for txid in txids:
                if txid not in claimed:
                    continue
                with contextlib.suppress(fast.PreparedBusy):  # see commit()
                    fast.finish_prepared(driver, "COMMIT", make_gid(self.name, txid))
                replies[txid] = self._reply(txid, "committed")
        for txid in txids:
            if txid not in replies:
                replies[txid] = self._handle_one("commit", txid)
        return replies

    def _commit_carefully(self, txid: str, gid: str) -> ProtocolReply:
        """Commit under the txid lock: a repeat, a commit a crash interrupted, a conflicting
        decision, or a txid with no record."""
        for _ in range(MAX_RACE_RECHECKS):
            with record.txid_lock(self.engine, self.name, txid) as conn:
                rec = record.get(conn, self.name, txid)
                xid = self._prepared_here(conn, rec, gid)
                prepared = xid is not None
                if self._aborted_here(conn, rec, prepared, gid):
                    return ProtocolReply.error(
                        409, "heuristic_abort", "this participant rolled back"
                    )
                if rec is None and not prepared:
                    return ProtocolReply.error(
                        404, "unknown_transaction", "no trace of this transaction here"
                    )
                # Decide in the record first (it may be 'committed' already: a repeat, or a
                # commit that a crash interrupted before COMMIT PREPARED).
                if not record.claim_commit(conn, self.name, txid, gid):
                    continue  # an abort was decided meanwhile: look again
                if rec is None and xid is not None:
                    record.remember_xid(conn, self.name, txid, xid)  # the record just made
                if prepared:
                    self._finish(conn, "COMMIT", gid)
                return self._reply(txid, "committed")
        raise RuntimeError(f"commit of {gid}: record kept changing")

    def abort(self, txid: str) -> ProtocolReply:
        gid = make_gid(self.name, txid)
        for _ in range(MAX_RACE_RECHECKS):
            with record.txid_lock(self.engine, self.name, txid) as conn:
                rec = record.get(conn, self.name, txid)
                prepared = self._prepared_here(conn, rec, gid) is not None
                committed = rec is not None and (
                    rec.state == "committed" or (rec.state == "prepared" and not prepared)
                )
                if committed:
                    # Decided (or done) already: finish it if a crash interrupted it.
                    record.claim_commit(conn, self.name, txid, gid)
                    if prepared:
                        self._finish(conn, "COMMIT", gid)
                    return ProtocolReply.error(
                        409, "heuristic_commit", "this participant already committed"
                    )
                # Record first: from here on, late work for this txid is refused, and recovery
                # never mistakes the missing prepared transaction for a commit.
                if not record.claim_abort(conn, self.name, txid, gid):
                    continue  # a commit was decided meanwhile: look again
                if prepared:
                    self._rollback_prepared(conn, gid)
                return self._reply(txid, "aborted")
        raise RuntimeError(f"abort of {gid}: record kept changing")

    # -- recovery ---------------------------------------------------------------------------------

    def in_doubt(self, min_age_s: float = 0.0) -> list[InDoubt]:
        prefix = gid_prefix(self.name)
        with record.autocommit(self.engine) as conn:
            gids = conn.execute(
                _OWNED_SQL,
                {"prefix": prefix, "limit": MAX_IN_DOUBT_PER_PASS, "min_age_s": min_age_s},
            ).scalars()
            prepared: dict[str, str] = {}
            for gid in gids:
                parsed = parse_gid(gid)
                if parsed is not None and parsed[0] == self.name:
                    prepared[parsed[1]] = gid
            recs = {r.txid: r for r in record.list_prepared(conn, self.name, min_age_s)}
            for txid in prepared.keys() - recs.keys():
                rec = record.get(conn, self.name, txid)
                if rec is not None:
                    recs[txid] = rec
            # A 'prepared' record whose work the listing above did not return (past its LIMIT,
            # or younger than min_age_s) must not pass for "committed, record lagging":
            # recovery would then COMMIT PREPARED it without asking. Look each one up.
            for txid in recs.keys() - prepared.keys():
                gid = recs[txid].gid or make_gid(self.name, txid)
                if self._is_prepared(conn, gid):
                    prepared[txid] = gid
        out = []
        for txid in sorted(prepared.keys() | recs.keys()):
            rec = recs.get(txid)
            out.append(
                InDoubt(
                    txid=txid,
                    prepared=txid in prepared,
                    record_state=rec.state if rec else None,
                    gid=prepared.get(txid) or (rec.gid if rec else None),
                    coordinator_url=rec.coordinator_url if rec else None,
                )
            )
        return out

    def abort_orphan(self, txid: str) -> str:
        gid = make_gid(self.name, txid)
        with record.txid_lock(self.engine, self.name, txid) as conn:
            if record.get(conn, self.name, txid) is not None or not self._is_prepared(conn, gid):
                return "changed_meanwhile"  # a live request finished it; next pass looks again
            # Insert, never overwrite: a request's own record may be landing this instant.
            if not record.insert_if_absent(conn, self.name, txid, "aborted", gid):
                return "changed_meanwhile"
            self._rollback_prepared(conn, gid)
            return "rolled_back_orphan"
