"""MariaDB/MySQL resource manager: a participant whose work is a local XA branch, made
durable-but-undecided with `XA PREPARE` (the same contract as `PgResourceManager`).

Per-request sequence (`work()`), on the application's SQLAlchemy engine:
1. connection A (autocommit mode: SQLAlchemy must never send COMMIT/ROLLBACK inside the
   branch, MariaDB refuses them there): read the record; a txid aborted (or done) here is
   refused before the application runs; then `XA START <xid>`;
2. the application does its work on A (inside the branch);
3. connection B takes the txid lock (`GET_LOCK`) and reads the record again: fresh, since B
   is autocommit, whatever the application's isolation level (so no isolation level is
   required of it, unlike PostgreSQL, where the check runs inside the work transaction);
4. A: `XA END`, `XA PREPARE`, then A is closed. Why: a session whose branch is prepared can
   run nothing else but XA COMMIT/ROLLBACK of that branch, and no other session may finish
   the branch while it is attached (`XAER_NOTA`); MariaDB >= 10.5 detaches a prepared branch
   from a session that ends and keeps it (older versions rolled it back: refused, see
   `check_server`). So every joined request costs one new connection;
5. B inserts the 'prepared' record and releases the lock; then enlist (vote yes), or not
   (deferred), as the PostgreSQL participant does.

Why the lock spans 3-5: a second request of the same txid is refused at its step 3 (the
first one's record is there, or its lock is held), so two requests can never both prepare;
a duplicate that started its branch while the first one's was prepared fails at once at
`XA START` (`XAER_DUPID`). An abort or the prepare handler takes the same lock. There is no
xid table (PostgreSQL's p0004): a duplicate request never reaches XA PREPARE, because its
record check under the lock is a fresh read.

Phase 2 and recovery follow the PostgreSQL participant's rules exactly (`pg_resource.py`,
`record.py`): the record says 'committed' before XA COMMIT and 'aborted' before XA
ROLLBACK; the plain phase-2 commit decides in one conditional update without the lock.
"Is it still prepared?" is `XA RECOVER`, which lists every prepared branch of the server,
also one still attached to the session that prepared it: such a branch answers XA COMMIT
with `XAER_NOTA` for a moment (its session is ending); that is waited out (MAX_BUSY_WAITS).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from participant_sdk import mysql_record as rec
from participant_sdk.client import TxcClient
from participant_sdk.errors import EnlistmentUncertain, ParticipantError, TxcError, WorkRefused
from participant_sdk.mysql_xid import Xid, fits, make_xid, ours
from participant_sdk.participant import ParticipantBase, ProtocolReply
from participant_sdk.recovery import RECOVERY_INTERVAL_S, InDoubt

log = logging.getLogger("txc.sdk.mysql")

MAX_RACE_RECHECKS = 3  # re-reads when the record changed meanwhile
# A branch prepared by a session that is just ending answers XA COMMIT/ROLLBACK with
# XAER_NOTA until the server has detached it (the session's end is processed asynchronously).
MAX_BUSY_WAITS = 200
BUSY_WAIT_S = 0.01
MIN_MARIADB = (10, 5)  # keeps a prepared branch when its session ends (MDEV-742)
MIN_MYSQL = (8, 0)  # the same since 5.7.7; only MariaDB is tested
# Server error numbers (MariaDB / MySQL share them).
ER_XAER_NOTA = 1397  # unknown XID
ER_XAER_RMFAIL = 1399  # command not allowed in the branch's state
ER_XAER_DUPID = 1440  # the XID already exists
ER_XA_RB_FIRST, ER_XA_RB_LAST = 1612, 1614  # XA_RBROLLBACK, XA_RBTIMEOUT, XA_RBDEADLOCK
ER_LOCK_DEADLOCK = 1213

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)")


@dataclass(frozen=True)
class MySqlWork:
    """What the application's code gets inside a joined request: the connection to do its
    work on, inside the XA branch (never commit or roll it back yourself, and no DDL: MariaDB
    refuses them inside a branch)."""

    txid: str | None  # None for a local transaction (join(required=False))
    participant: str
    xid: str | None  # readable xid of the branch (Xid.display)
    connection: Connection


def is_mysql(engine: Engine) -> bool:
    return engine.dialect.name in ("mysql", "mariadb")


ISOLATION_LEVELS = ("READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE")


def _branch_isolation(conn: Connection) -> str | None:
    """The isolation level the application asked of this connection (an `isolation_level`
    execution option of its engine or connection), to be given to the branch. Why: the SDK
    switches the connection to autocommit mode (see the module doc, step 1), which in
    SQLAlchemy replaces that option; the session's own level (the server's default, or the
    engine's `create_engine(isolation_level=...)`, set once per session) applies as it is."""
    level = conn.get_execution_options().get("isolation_level")
    if level is None or level == "AUTOCOMMIT":
        return None
    level = str(level).upper().replace("_", " ")
    if level not in ISOLATION_LEVELS:
        raise ValueError(f"unknown isolation level {level!r}")
    return level


class MySqlResourceManager(ParticipantBase):
    """A MariaDB (>= 10.5) or MySQL (>= 8.0) participant. `engine` points at the participant's
    own database (the URL must name it), which holds the record table (`create_tables()`).
    Any driver SQLAlchemy supports for MySQL; the SDK depends on PyMySQL (see README)."""

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
        if not is_mysql(engine):
            raise ValueError(
                "MySqlResourceManager needs a MariaDB/MySQL engine (mysql+pymysql://...), "
                f"not {engine.dialect.name}"
            )
        if not engine.url.database:
            raise ValueError("the participant's database URL must name its database")
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
        self.database = str(engine.url.database)
        self._server_ok = False

    def create_tables(self) -> None:
        rec.create_tables(self.engine)

    def xid(self, txid: str) -> Xid:
        return make_xid(self.name, txid, self.database)

    # -- checks ------------------------------------------------------------------------------

    def check_server(self) -> None:
        """Once per process: a server that keeps prepared branches of ended sessions, and the
        record table. Why before any work: on an older server the branch would be rolled
        back the moment step 4 closes its session, after the coordinator counted a YES."""
        if self._server_ok:
            return
        with rec.autocommit(self.engine) as conn:
            version = str(conn.exec_driver_sql("SELECT VERSION()").scalar_one())
            table = rec.has_table(conn)
        mariadb = "mariadb" in version.lower()
        m = _VERSION_RE.match(version)
        have = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        need = MIN_MARIADB if mariadb else MIN_MYSQL
        if have < need:
            kind = "MariaDB" if mariadb else "MySQL"
            raise ParticipantError(
                f"{kind} {version} rolls back a prepared XA branch when its session ends; "
                f"the SDK needs {kind} >= {need[0]}.{need[1]}",
                code="server_not_supported",
                status=503,
            )
        if not table:
            raise ParticipantError(
                f"the participant's table {rec.TABLE_NAME} is missing: run create_tables()",
                code="schema_out_of_date",
                status=503,
            )
        self._server_ok = True

    def _xid_for_work(self, txid: str) -> Xid:
        try:
            return self.xid(txid)
        except ValueError as e:
            raise ParticipantError(str(e), code="invalid_txid", status=400) from None

    # -- the application's work -----------------------------------------------------------------

    @contextlib.contextmanager
    def work(
        self, txid: str, coordinator_url: str | None = None, deferred: bool = False
    ) -> Iterator[MySqlWork]:
        xid = self._xid_for_work(txid)
        if deferred:
            self.check_deferred()
        self.check_server()
        self.coordinator_for(coordinator_url)  # fail before any work when none is known
        with self.engine.connect() as conn:
            level = _branch_isolation(conn)
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            existing = rec.state(conn, self.name, txid)
            if existing is not None:
                raise self._refusal(existing)
            if level is not None:
                conn.exec_driver_sql(f"SET TRANSACTION ISOLATION LEVEL {level}")
            try:
                conn.exec_driver_sql(f"XA START {xid.sql}")
            except DBAPIError as e:
                if rec.error_code(e) == ER_XAER_DUPID:
                    raise WorkRefused(
                        f"transaction {txid} is already prepared here by another request",
                        code="already_prepared",
                    ) from e
                raise
            try:
                yield MySqlWork(txid, self.name, xid.display, conn)
            except BaseException:
                self._end_and_rollback(conn, xid)
                raise
            self._prepare(conn, txid, xid)
        if deferred:
            return  # the client brings our enlistment; recovery settles it if it never does
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

    @contextlib.contextmanager
    def local_work(self) -> Iterator[MySqlWork]:
        with self.engine.begin() as conn:
            yield MySqlWork(None, self.name, None, conn)

    @staticmethod
    def _end_and_rollback(conn: Connection, xid: Xid) -> None:
        """Undo a branch that is not prepared. A branch a deadlock already rolled back
        answers XA END with XA_RB*; anything unexpected drops the session (which rolls an
        unprepared branch back)."""
        try:
            try:
                conn.exec_driver_sql(f"XA END {xid.sql}")
            except DBAPIError as e:
                code = rec.error_code(e)
                if code is None or not ER_XA_RB_FIRST <= code <= ER_XA_RB_LAST:
                    raise
            conn.exec_driver_sql(f"XA ROLLBACK {xid.sql}")
        except DBAPIError:
            log.warning("could not roll back branch %s; dropping the session", xid.display)
            conn.invalidate()

    def _prepare(self, conn: Connection, txid: str, xid: Xid) -> None:
        with rec.autocommit(self.engine) as lock_conn:
            try:
                locked, existing = rec.lock_and_state(lock_conn, self.database, self.name, txid)
            except DBAPIError as e:
                self._end_and_rollback(conn, xid)
                lock_conn.invalidate()  # and any lock with it
                raise WorkRefused(
                    f"could not take the transaction's lock; nothing was prepared ({e.orig})",
                    code="work_failed",
                ) from e
            if not locked:
                self._end_and_rollback(conn, xid)
                raise WorkRefused(
                    "the transaction's lock was not free in time; nothing was prepared",
                    code="work_failed",
                )
            try:
                if existing is not None:
                    self._end_and_rollback(conn, xid)
                    raise self._refusal(existing)
                try:
                    conn.exec_driver_sql(f"XA END {xid.sql}")
                    conn.exec_driver_sql(f"XA PREPARE {xid.sql}")
                except DBAPIError as e:
                    # XA_RB*: a deadlock or a timeout rolled the branch back. Otherwise the
                    # session goes: a branch it may have prepared has no record (an orphan,
                    # which recovery rolls back).
                    conn.invalidate()
                    raise WorkRefused(
                        f"the work's transaction had failed; nothing was prepared ({e.orig})",
                        code="work_failed",
                    ) from e
                # Detach the prepared branch (see the module doc, step 4).
                conn.invalidate()
                if rec.insert_if_absent(lock_conn, self.name, txid, "prepared", xid.display, None):
                    return
                # Nothing writes a record of this txid without its lock; should it happen
                # anyway, our branch goes, and the request is refused.
                self._finish(lock_conn, "ROLLBACK", xid)
                raise self._refusal(rec.state(lock_conn, self.name, txid) or "aborted")
            finally:
                self._release(lock_conn, txid)

    def _release(self, conn: Connection, txid: str) -> None:
        try:
            rec.unlock(conn, self.database, self.name, txid)
        except Exception:
            log.exception("could not release the txid lock of %s; dropping the session", txid)
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

    # -- XA helpers -----------------------------------------------------------------------------

    def _recover(self, conn: Connection) -> dict[str, Xid]:
        """This participant's prepared branches (txid -> xid), from `XA RECOVER`."""
        rows = conn.exec_driver_sql("XA RECOVER").all()
        return ours((tuple(r) for r in rows), self.name, self.database)

    def _is_prepared(self, conn: Connection, txid: str) -> bool:
        return fits(txid) and txid in self._recover(conn)

    def _finish(self, conn: Connection, verb: str, xid: Xid) -> bool:
        """XA COMMIT/ROLLBACK on an autocommit connection; False when the branch no longer
        exists (someone finished it). Waits out a branch whose session is still ending."""
        for _ in range(MAX_BUSY_WAITS):
            try:
                conn.exec_driver_sql(f"XA {verb} {xid.sql}")
                return True
            except DBAPIError as e:
                if rec.error_code(e) != ER_XAER_NOTA:
                    raise
            txid = xid.txid
            assert txid is not None
            if txid not in self._recover(conn):
                return False
            time.sleep(BUSY_WAIT_S)
        raise RuntimeError(f"XA {verb} {xid.display}: still attached after {MAX_BUSY_WAITS} waits")

    def _aborted_here(
        self, conn: Connection, r: rec.Record | None, prepared: bool, txid: str
    ) -> bool:
        """Whether the record says this participant aborted; if so, finish that abort."""
        if r is None or r.state != "aborted":
            return False
        if prepared:
            self._finish(conn, "ROLLBACK", self.xid(txid))
        return True

    def _locked(self, txid: str) -> contextlib.AbstractContextManager[Connection]:
        return rec.txid_lock(self.engine, self.database, self.name, txid)

    # -- protocol handlers (coordinator -> participant) -----------------------------------------

    def _reply(self, txid: str, state: str) -> ProtocolReply:
        return ProtocolReply(200, {"txid": txid, "participant": self.name, "state": state})

    def prepare(self, txid: str) -> ProtocolReply:
        """Normally skipped (we enlist with vote yes); answers consistently when asked."""
        for _ in range(MAX_RACE_RECHECKS):
            with self._locked(txid) as conn:
                r = rec.get(conn, self.name, txid)
                prepared = self._is_prepared(conn, txid)
                if self._aborted_here(conn, r, prepared, txid):
                    return ProtocolReply(409, {"vote": "no", "reason": "aborted here"})
                if r is not None:
                    return ProtocolReply(200, {"vote": "yes"})
                if not prepared:
                    if not rec.claim_abort(conn, self.name, txid):
                        continue
                    return ProtocolReply(
                        409, {"vote": "no", "reason": "no prepared work for this transaction"}
                    )
                # Prepared, not recorded (its request died before recording it): adopt it.
                if rec.insert_if_absent(conn, self.name, txid, "prepared", self.xid(txid).display):
                    return ProtocolReply(200, {"vote": "yes"})
        raise RuntimeError(f"prepare of {txid}: record kept changing")

    def commit(self, txid: str) -> ProtocolReply:
        if fits(txid):
            # The common case, without the txid lock: the record says 'prepared'; decide in it.
            with rec.autocommit(self.engine) as conn:
                if rec.claim_prepared_commit(conn, self.name, txid):
                    # False: nothing prepared, i.e. committed before a crash.
                    self._finish(conn, "COMMIT", self.xid(txid))
                    return self._reply(txid, "committed")
        return self._commit_carefully(txid)

    def commit_many(self, txids: list[str]) -> dict[str, ProtocolReply]:
        """`commit` for a batch: the records of every plain 'prepared' txid move to
        'committed' in one short transaction, then each branch is XA COMMITted; the rest
        take the careful path one by one (the same rule per txid as `commit`)."""
        assert len(set(txids)) == len(txids), "distinct txids"
        replies: dict[str, ProtocolReply] = {}
        claimed = rec.claim_commits(self.engine, self.name, [t for t in txids if fits(t)])
        if claimed:
            with rec.autocommit(self.engine) as conn:
                for txid in txids:
                    if txid in claimed:
                        self._finish(conn, "COMMIT", self.xid(txid))
                        replies[txid] = self._reply(txid, "committed")
        for txid in txids:
            if txid not in replies:
                replies[txid] = self._handle_one("commit", txid)
        return replies

    def _commit_carefully(self, txid: str) -> ProtocolReply:
        for _ in range(MAX_RACE_RECHECKS):
            with self._locked(txid) as conn:
                r = rec.get(conn, self.name, txid)
                prepared = self._is_prepared(conn, txid)
                if self._aborted_here(conn, r, prepared, txid):
                    return ProtocolReply.error(
                        409, "heuristic_abort", "this participant rolled back"
                    )
                if r is None and not prepared:
                    return ProtocolReply.error(
                        404, "unknown_transaction", "no trace of this transaction here"
                    )
                if not rec.claim_commit(conn, self.name, txid):
                    continue  # an abort was decided meanwhile: look again
                if prepared:
                    self._finish(conn, "COMMIT", self.xid(txid))
                return self._reply(txid, "committed")
        raise RuntimeError(f"commit of {txid}: record kept changing")

    def abort(self, txid: str) -> ProtocolReply:
        for _ in range(MAX_RACE_RECHECKS):
            with self._locked(txid) as conn:
                r = rec.get(conn, self.name, txid)
                prepared = self._is_prepared(conn, txid)
                committed = r is not None and (
                    r.state == "committed" or (r.state == "prepared" and not prepared)
                )
                if committed:
                    rec.claim_commit(conn, self.name, txid)
                    if prepared:
                        self._finish(conn, "COMMIT", self.xid(txid))
                    return ProtocolReply.error(
                        409, "heuristic_commit", "this participant already committed"
                    )
                # Record first: late work for this txid is refused from here on.
                if not rec.claim_abort(conn, self.name, txid):
                    continue
                if prepared:
                    self._finish(conn, "ROLLBACK", self.xid(txid))
                return self._reply(txid, "aborted")
        raise RuntimeError(f"abort of {txid}: record kept changing")

    # -- recovery ---------------------------------------------------------------------------------

    def in_doubt(self, min_age_s: float = 0.0) -> list[InDoubt]:
        """Prepared branches (XA RECOVER) and 'prepared' records. XA RECOVER says nothing of a
        branch's age: with `min_age_s`, a branch whose 'prepared' record is younger is left
        out (in-flight work); one without a record is always included (`abort_orphan`
        re-checks under the lock that a live request holds until its record is written)."""
        with rec.autocommit(self.engine) as conn:
            prepared = self._recover(conn)
            recs = {r.txid: r for r in rec.list_prepared(conn, self.name, min_age_s)}
            for txid in list(prepared.keys() - recs.keys()):
                r = rec.get(conn, self.name, txid)
                if r is None:
                    continue
                if r.state == "prepared":
                    del prepared[txid]  # younger than min_age_s (else it was listed)
                else:
                    recs[txid] = r
        out = []
        for txid in sorted(prepared.keys() | recs.keys()):
            r = recs.get(txid)
            xid = prepared.get(txid)
            out.append(
                InDoubt(
                    txid=txid,
                    prepared=xid is not None,
                    record_state=r.state if r else None,
                    gid=xid.display if xid else (r.gid if r else None),
                    coordinator_url=r.coordinator_url if r else None,
                )
            )
        return out

    def abort_orphan(self, txid: str) -> str:
        with self._locked(txid) as conn:
            if rec.get(conn, self.name, txid) is not None or not self._is_prepared(conn, txid):
                return "changed_meanwhile"
            if not rec.insert_if_absent(conn, self.name, txid, "aborted", self.xid(txid).display):
                return "changed_meanwhile"
            self._finish(conn, "ROLLBACK", self.xid(txid))
            return "rolled_back_orphan"
