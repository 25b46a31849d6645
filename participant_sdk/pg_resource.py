"""PostgreSQL resource manager: a participant whose work is a local PostgreSQL transaction,
made durable-but-undecided with `PREPARE TRANSACTION` (DESIGN §6).

Why *eager* prepare (at the end of the business request, before its response, then enlist
with `vote: "yes"`): no database connection or transaction is held open between the business
request and the coordinator's phase 2, the coordinator skips phase 1 for this participant,
and a crash of this process loses nothing (the prepared transaction survives in PostgreSQL;
recovery resolves it). The price: a request's row locks are held until phase 2 arrives, and
one participant can do the work of one txid in one request only (a second request for the
same txid is refused with 409 `already_prepared`).

Per-request sequence (`work()`):
1. refuse at once if the record already knows the txid (aborted, or already prepared);
2. BEGIN on a dedicated connection; the application does its work;
3. under the txid lock: PREPARE TRANSACTION 'txc:<name>:<txid>', check it is really
   prepared, insert the 'prepared' record (if an 'aborted' record won the race: ROLLBACK
   PREPARED and refuse);
4. enlist with the coordinator (vote yes). Refused (4xx) -> record 'aborted', ROLLBACK
   PREPARED, 409. Unknown (network/5xx) -> keep it prepared (in doubt) and answer 503.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import RootTransaction
from sqlalchemy.exc import DBAPIError

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

MAX_RACE_RECHECKS = 3  # re-reads when a prepared transaction vanishes under our feet
SQLSTATE_UNDEFINED_OBJECT = "42704"  # "prepared transaction ... does not exist"
SQLSTATE_DUPLICATE_OBJECT = "42710"  # "transaction identifier ... is already in use"
SQLSTATE_PREREQUISITE = "55000"  # e.g. prepared transactions are disabled

_PREPARED_SQL = text(
    "SELECT 1 FROM pg_prepared_xacts WHERE gid = :gid AND database = current_database()"
)
_OWNED_SQL = text(
    "SELECT gid FROM pg_prepared_xacts "
    "WHERE database = current_database() AND left(gid, length(:prefix)) = :prefix "
    "ORDER BY prepared LIMIT :limit"
)


def _sqlstate(e: DBAPIError) -> str | None:
    orig = e.orig
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


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
        participant_token: str | None = None,
    ) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError("PgResourceManager needs a PostgreSQL engine")
        super().__init__(
            name,
            public_url=public_url,
            coordinator_url=coordinator_url,
            token=token,
            prefix=prefix,
            coordinator=coordinator,
            recovery_interval_s=recovery_interval_s,
            participant_token=participant_token,
        )
        self.engine = engine

    def create_tables(self) -> None:
        record.create_tables(self.engine)

    def max_prepared_transactions(self) -> int:
        """The server's setting; 0 means PREPARE TRANSACTION is disabled."""
        with self.engine.connect() as conn:
            return int(conn.execute(text("SHOW max_prepared_transactions")).scalar_one())

    # -- the application's work -----------------------------------------------------------------

    @contextlib.contextmanager
    def work(self, txid: str, coordinator_url: str | None = None) -> Iterator[PgWork]:
        validate_txid(txid)
        gid = make_gid(self.name, txid)
        self.coordinator_for(coordinator_url)  # fail before any work when none is known
        # Stored so that recovery knows whom to ask when no coordinator is configured.
        stored_url = None if self.coordinator_url else coordinator_url
        with self.engine.connect() as conn:
            existing = record.get(conn, self.name, txid)
            conn.rollback()
            if existing is not None:
                raise self._refusal(existing.state)
            trans = conn.begin()
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
            self._prepare(conn, trans, txid, gid, stored_url)
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

    @contextlib.contextmanager
    def local_work(self) -> Iterator[PgWork]:
        with self.engine.begin() as conn:
            yield PgWork(None, self.name, None, conn)

    def _prepare(
        self,
        conn: Connection,
        trans: RootTransaction,
        txid: str,
        gid: str,
        coordinator_url: str | None,
    ) -> None:
        # A session-level lock even though taken inside the transaction: it survives the
        # PREPARE and is released explicitly below.
        try:
            record.acquire(conn, self.name, txid)
        except DBAPIError as e:  # typically: the application swallowed a failed statement
            trans.rollback()
            raise WorkRefused(
                f"the work's transaction had failed; nothing was prepared ({e.orig})",
                code="work_failed",
            ) from e
        try:
            try:
                conn.exec_driver_sql(f"PREPARE TRANSACTION '{gid}'")
            except DBAPIError as e:
                trans.rollback()
                state = _sqlstate(e)
                if state == SQLSTATE_DUPLICATE_OBJECT:
                    raise WorkRefused(
                        f"transaction {txid} is already prepared here by another request",
                        code="already_prepared",
                    ) from e
                if state == SQLSTATE_PREREQUISITE:
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
            if not self._is_prepared(conn, gid):
                # PREPARE on a transaction that had already failed is a plain ROLLBACK.
                raise WorkRefused(
                    "the work's transaction had failed; nothing was prepared", code="work_failed"
                )
            if not record.insert_if_absent(conn, self.name, txid, "prepared", gid, coordinator_url):
                existing = record.get(conn, self.name, txid)
                self._rollback_prepared(conn, gid)
                raise self._refusal(existing.state if existing else "aborted")
        finally:
            self._release(conn, txid)

    def _release(self, conn: Connection, txid: str) -> None:
        try:
            record.release(conn, self.name, txid)
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
    def _is_prepared(conn: Connection, gid: str) -> bool:
        return conn.execute(_PREPARED_SQL, {"gid": gid}).first() is not None

    @staticmethod
    def _finish(conn: Connection, verb: str, gid: str) -> bool:
        """COMMIT/ROLLBACK PREPARED; False when it no longer exists (someone finished it)."""
        try:
            conn.exec_driver_sql(f"{verb} PREPARED '{gid}'")
            return True
        except DBAPIError as e:
            if _sqlstate(e) == SQLSTATE_UNDEFINED_OBJECT:
                return False
            raise

    def _rollback_prepared(self, conn: Connection, gid: str) -> None:
        self._finish(conn, "ROLLBACK", gid)

    # -- protocol handlers (coordinator -> participant) -----------------------------------------

    def _reply(self, txid: str, state: str) -> ProtocolReply:
        return ProtocolReply(200, {"txid": txid, "participant": self.name, "state": state})

    def prepare(self, txid: str) -> ProtocolReply:
        """Normally skipped (we enlist with vote yes); answers consistently when asked."""
        gid = make_gid(self.name, txid)
        with record.txid_lock(self.engine, self.name, txid) as conn:
            rec = record.get(conn, self.name, txid)
            prepared = self._is_prepared(conn, gid)
            if rec is not None and rec.state == "aborted":
                if prepared:
                    self._rollback_prepared(conn, gid)
                return ProtocolReply(409, {"vote": "no", "reason": "aborted here"})
            if rec is None and not prepared:
                # Voting NO is a local abort: remember it so late work is refused.
                record.set_state(conn, self.name, txid, "aborted", gid)
                return ProtocolReply(
                    409, {"vote": "no", "reason": "no prepared work for this transaction"}
                )
            if rec is None:
                record.insert_if_absent(conn, self.name, txid, "prepared", gid)
            return ProtocolReply(200, {"vote": "yes"})

    def commit(self, txid: str) -> ProtocolReply:
        gid = make_gid(self.name, txid)
        for _ in range(MAX_RACE_RECHECKS):
            with record.txid_lock(self.engine, self.name, txid) as conn:
                rec = record.get(conn, self.name, txid)
                if self._is_prepared(conn, gid):
                    if rec is not None and rec.state == "aborted":
                        self._rollback_prepared(conn, gid)  # finish the abort we decided
                        return ProtocolReply.error(
                            409, "heuristic_abort", "this participant rolled back"
                        )
                    if not self._finish(conn, "COMMIT", gid):
                        continue  # finished by someone else meanwhile: look again
                    record.set_state(conn, self.name, txid, "committed", gid)
                    return self._reply(txid, "committed")
                if rec is None:
                    return ProtocolReply.error(
                        404, "unknown_transaction", "no trace of this transaction here"
                    )
                if rec.state == "aborted":
                    return ProtocolReply.error(
                        409, "heuristic_abort", "this participant rolled back"
                    )
                if rec.state == "prepared":
                    # Committed before a crash (rollbacks always record 'aborted' first).
                    record.mark(conn, self.name, txid, "committed")
                return self._reply(txid, "committed")
        raise RuntimeError(f"commit of {gid}: prepared transaction kept changing")

    def abort(self, txid: str) -> ProtocolReply:
        gid = make_gid(self.name, txid)
        with record.txid_lock(self.engine, self.name, txid) as conn:
            rec = record.get(conn, self.name, txid)
            prepared = self._is_prepared(conn, gid)
            if rec is not None and not prepared and rec.state in ("prepared", "committed"):
                if rec.state == "prepared":
                    record.mark(conn, self.name, txid, "committed")
                return ProtocolReply.error(
                    409, "heuristic_commit", "this participant already committed"
                )
            # Record first: from here on, late work for this txid is refused, and recovery
            # never mistakes the missing prepared transaction for a commit.
            record.set_state(conn, self.name, txid, "aborted", gid)
            if prepared:
                self._rollback_prepared(conn, gid)
            return self._reply(txid, "aborted")

    # -- recovery ---------------------------------------------------------------------------------

    def in_doubt(self) -> list[InDoubt]:
        prefix = gid_prefix(self.name)
        with record.autocommit(self.engine) as conn:
            gids = conn.execute(
                _OWNED_SQL, {"prefix": prefix, "limit": MAX_IN_DOUBT_PER_PASS}
            ).scalars()
            prepared: dict[str, str] = {}
            for gid in gids:
                parsed = parse_gid(gid)
                if parsed is not None and parsed[0] == self.name:
                    prepared[parsed[1]] = gid
            recs = {r.txid: r for r in record.list_in_state(conn, self.name, "prepared")}
            for txid in prepared.keys() - recs.keys():
                rec = record.get(conn, self.name, txid)
                if rec is not None:
                    recs[txid] = rec
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
            record.set_state(conn, self.name, txid, "aborted", gid)
            self._rollback_prepared(conn, gid)
            return "rolled_back_orphan"
