"""Generic participant for resources that are not a PostgreSQL database (a message broker,
a file store, an external API with reservations...), driven through three callbacks.

Why the coordinator calls `/prepare` here (unlike the PostgreSQL resource manager's eager
prepare): the SDK cannot make arbitrary work durable on its own, so the application's
`prepare(txid)` callback does it when the coordinator asks, and returns "yes", "no" or
"read_only". The SDK keeps the durable record (in `record_engine`, PostgreSQL or SQLite) that
makes every message idempotent, refuses work after an abort, and lets recovery finish
prepared transactions after a crash.

Contract for the callbacks: `prepare` must make the work durable before returning "yes";
`commit` and `abort` must be idempotent (they can run again after a crash between the
callback and the record update, or after they raised), and `abort` must accept a txid it
never prepared (an abort can arrive before, during or instead of the work, and after a
`prepare` that did not finish). The record of a txid is written before `prepare` runs, so a
crash during or after it leaves recovery to ask the coordinator and run `abort`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine

from participant_sdk import record
from participant_sdk.client import TxcClient
from participant_sdk.errors import EnlistmentUncertain, TxcError, WorkRefused
from participant_sdk.headers import validate_txid
from participant_sdk.participant import MAX_REASON, ParticipantBase, ProtocolReply
from participant_sdk.recovery import RECOVERY_INTERVAL_S, InDoubt

log = logging.getLogger("txc.sdk.callbacks")

VOTES = ("yes", "no", "read_only")
# Coordinator URLs taken from callers' headers, kept from a txid's work to its prepare.


@dataclass(frozen=True)
class CallbackWork:
    """Handed to the application inside a joined request."""

    txid: str | None
    participant: str


class CallbackParticipant(ParticipantBase):
    def __init__(
        self,
        name: str,
        *,
        prepare: Callable[[str], str],
        commit: Callable[[str], None],
        abort: Callable[[str], None],
        record_engine: Engine,
        public_url: str,
        coordinator_url: str | None = None,
        token: str | None = None,
        prefix: str = "/txc",
        coordinator: TxcClient | None = None,
        recovery_interval_s: float = RECOVERY_INTERVAL_S,
        participant_token: str | Sequence[str] | None = None,
        development: bool = False,
    ) -> None:
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
        )
        self._prepare_cb = prepare
        self._commit_cb = commit
        self._abort_cb = abort
        self.engine = record_engine

    def create_tables(self) -> None:
        record.create_tables(self.engine)

    # -- the application's work -----------------------------------------------------------------

    # Deferred enlistment is not offered (`supports_deferred` stays False): until the
    # coordinator calls prepare, the work exists only where the application keeps it, and a
    # client that never brought the enlistment to its commit would leave it there with
    # nobody ever sending an abort.

    @contextlib.contextmanager
    def work(
        self, txid: str, coordinator_url: str | None = None, deferred: bool = False
    ) -> Iterator[CallbackWork]:
        """Refuse when the txid is already decided or prepared here; after the block, enlist
        (without a vote: the coordinator will call /prepare). Several requests may work for
        the same txid before it is prepared."""
        validate_txid(txid)
        if deferred:
            self.check_deferred()  # raises, before any work: this kind never defers (above)
        self.coordinator_for(coordinator_url)
        self._refuse_if_recorded(txid)
        yield CallbackWork(txid, self.name)
        # Again after the work: a prepare (or an abort) that began while it ran may not have
        # seen it, so the request must not pass for part of the transaction. One that begins
        # after this check runs its callback after the work was done.
        self._refuse_if_recorded(txid, late=True)
        try:
            self.enlist(txid, coordinator_url, None)
        except TxcError as e:
            if self.enlistment_definitely_failed(e):
                self.abort(txid)
                raise WorkRefused(
                    f"the coordinator refused the enlistment: {e}", code="enlistment_refused"
                ) from e
            raise EnlistmentUncertain(f"the enlistment's fate is unknown: {e}") from e

    def _refuse_if_recorded(self, txid: str, late: bool = False) -> None:
        with record.autocommit(self.engine) as conn:
            existing = record.get(conn, self.name, txid)
        if existing is None:
            return
        when = " while this request worked" if late else ""
        if existing.state == "aborted":
            raise WorkRefused(f"the transaction was aborted here{when}", code="aborted")
        raise WorkRefused(
            f"the transaction was already prepared here{when}", code="already_prepared"
        )

    @contextlib.contextmanager
    def local_work(self) -> Iterator[CallbackWork]:
        yield CallbackWork(None, self.name)

    # -- protocol handlers --------------------------------------------------------------------

    def prepare(self, txid: str) -> ProtocolReply:
        """The record is written *before* the callback runs (marked CALLBACK_PREPARING until
        it votes yes): whatever the callback made durable is then known to recovery, even if
        the process dies before answering. A prepare found unfinished votes NO and aborts."""
        with record.txid_lock(self.engine, self.name, txid) as conn:
            rec = record.get(conn, self.name, txid)
            if rec is not None:
                if rec.state == "aborted":
                    return ProtocolReply(409, {"vote": "no", "reason": "aborted here"})
                if rec.state == "prepared" and rec.gid == record.CALLBACK_PREPARING:
                    return self._vote_no(conn, txid, "an earlier prepare did not finish")
                return ProtocolReply(200, {"vote": "yes"})
            # No coordinator URL in the record: recovery asks the configured one only.
            if not record.insert_if_absent(
                conn, self.name, txid, "prepared", record.CALLBACK_PREPARING, None
            ):
                # Only another process sharing a SQLite record store (whose lock is local to
                # a process) can get here: answer "try again" rather than run the callback.
                return ProtocolReply.error(503, "busy", "the record changed meanwhile")
            try:
                vote = self._prepare_cb(txid)
            except Exception as e:
                log.exception("prepare callback of %s failed", txid)
                vote, reason = "no", f"prepare failed: {type(e).__name__}: {e}"
            else:
                reason = "the application voted no"
            if vote not in VOTES:
                vote, reason = "no", f"prepare callback returned {vote!r}"
            if vote == "yes":
                if record.finish_preparing(conn, self.name, txid):
                    return ProtocolReply(200, {"vote": "yes"})
                # Aborted meanwhile by another process (the txid lock did not hold): undo
                # what the callback just prepared, since nothing else will.
                self._abort_cb(txid)
                return ProtocolReply(409, {"vote": "no", "reason": "aborted here meanwhile"})
            if vote == "read_only":
                record.forget_preparing(conn, self.name, txid)
                return ProtocolReply(200, {"vote": "read_only"})
            return self._vote_no(conn, txid, reason)

    def _vote_no(self, conn: Connection, txid: str, reason: str) -> ProtocolReply:
        """NO is a local abort: the application cleans up, then the record says 'aborted'
        (late work is refused). If the abort callback fails, the record still says prepared,
        so recovery asks for the outcome (ABORT) and runs it again."""
        self._abort_cb(txid)
        record.set_state(conn, self.name, txid, "aborted")
        return ProtocolReply(409, {"vote": "no", "reason": reason[:MAX_REASON]})

    def commit(self, txid: str) -> ProtocolReply:
        with record.txid_lock(self.engine, self.name, txid) as conn:
            rec = record.get(conn, self.name, txid)
            if rec is None:
                return ProtocolReply.error(
                    404, "unknown_transaction", "no trace of this transaction here"
                )
            if rec.state == "aborted":
                return ProtocolReply.error(409, "heuristic_abort", "this participant rolled back")
            if rec.state == "prepared" and rec.gid == record.CALLBACK_PREPARING:
                # Never voted yes, so no COMMIT can have been decided with it: refuse, loudly.
                log.error("commit of %s, whose prepare never finished here: refused", txid)
                return ProtocolReply.error(
                    503, "prepare_unfinished", "this participant never finished preparing"
                )
            if rec.state == "prepared":
                self._commit_cb(txid)  # raises -> 503 to the coordinator, which retries
                record.mark(conn, self.name, txid, "committed")
            return ProtocolReply(
                200, {"txid": txid, "participant": self.name, "state": "committed"}
            )

    def abort(self, txid: str) -> ProtocolReply:
        with record.txid_lock(self.engine, self.name, txid) as conn:
            rec = record.get(conn, self.name, txid)
            if rec is not None and rec.state == "committed":
                return ProtocolReply.error(
                    409, "heuristic_commit", "this participant already committed"
                )
            if rec is not None and rec.state == "prepared":
                # Work to undo: the callback first, so that if it fails the record still
                # says prepared and the abort is run again (coordinator retry, recovery).
                self._abort_cb(txid)
                record.set_state(conn, self.name, txid, "aborted")
            else:
                # Nothing prepared here: record the abort first, so that late work is refused
                # even if the callback fails.
                record.set_state(conn, self.name, txid, "aborted")
                self._abort_cb(txid)
            return ProtocolReply(200, {"txid": txid, "participant": self.name, "state": "aborted"})

    # -- recovery -------------------------------------------------------------------------------

    def in_doubt(self, min_age_s: float = 0.0) -> list[InDoubt]:
        with record.autocommit(self.engine) as conn:
            recs = record.list_prepared(conn, self.name, min_age_s)
        return [
            InDoubt(
                r.txid, prepared=True, record_state="prepared", coordinator_url=r.coordinator_url
            )
            for r in recs
        ]

    def abort_orphan(self, txid: str) -> str:
        return "none"  # every prepared callback transaction has a record
