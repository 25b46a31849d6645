"""The 2PC engine: the asyncio shell that drives transactions through the pure state machine.

It decides nothing by itself: every step is a command proposed to the log, and the state
machine applies the rules of DESIGN §3 when the command is committed. That is what makes a
leader change safe: a new leader reads the applied state and carries on (phase 2 resumes,
unfinished prepares are re-run, expired transactions are aborted), and a decision proposed
twice is settled by the decision register.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from coordinator import tracing
from coordinator.commands import (
    Ack,
    AcknowledgeHeuristic,
    Begin,
    Command,
    Decide,
    Enlist,
    Phase2Attempt,
    RecordVote,
    StartPrepare,
)
from coordinator.config import Settings
from coordinator.log import CommandLog
from coordinator.logs import txid_var
from coordinator.metrics import Metrics
from coordinator.model import Outcome, Participant, Phase2, Transaction, TxState, Vote
from coordinator.participant_client import ParticipantClient, ProtocolCaller, Reply
from coordinator.phase2_batch import Phase2Batcher
from coordinator.proposal_batch import ProposalCoalescer
from coordinator.statemachine import Result, Status
from coordinator.store import Store

log = logging.getLogger("txc.engine")

# Idempotency keys map to transaction ids deterministically, so a retried begin (even one
# that reaches another node after a leader change) names the same transaction.
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f0c5a52-6c2b-4a53-9d0e-3f6a7c1d2b90")
# Commands in one coalesced entry of phase-2 results: the Raft task applies up to 64 entries
# inline per Ready (replicated_log.MAX_COMMITTED_PER_READY), so entries stay small.
MAX_COALESCED_COMMANDS = 64
# Courtesy aborts (one message each, see Engine._courtesy_aborts): how many may wait, how many
# are sent at once (their own slots: a burst to an unreachable host must not hold phase 2's),
# and how long one may take. Past the first bound they are skipped, which presumed abort
# makes safe.
MAX_COURTESY_ABORTS = 1024
MAX_COURTESY_INFLIGHT = 16
COURTESY_ABORT_TIMEOUT_S = 2.0


def txid_for_key(key: str) -> str:
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, key))


class EngineError(Exception):
    def __init__(self, status: Status, message: str, txn: Transaction | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.txn = txn


class _Phase2Incomplete(Exception):
    """Some participant has not acknowledged yet: tenacity retries the round."""


@dataclass(frozen=True)
class VoteReply:
    """A participant's answer to prepare. `answered` False: no answer we could read (a
    timeout, a refused connection, a 5xx, a garbled body), counted as NO (rule 2); unlike an
    explicit NO, the participant may have prepared before its answer was lost, so it is sent
    a courtesy abort (see Engine._courtesy_aborts)."""

    vote: Vote
    reason: str | None
    answered: bool = True


@dataclass(frozen=True)
class Carried:
    """What a commit may bring along so that the whole transaction takes one log round: a
    lazy begin (the client chose the txid and never called begin) and enlistments that the
    participants handed to the client instead of sending them (deferred enlistment; the API
    checked their signatures). Applied in order before the decision, in the same entry.

    A lazy begin is a plain keyless Begin (what a node of an earlier release decodes too).
    Its txid is the client's, so it may exist already: it is only ever proposed followed by
    a decision for the same txid in the same entry, which makes the store load that txid's
    record for the whole batch (coordinator/store.py `_reads`)."""

    begin: Begin | None
    enlists: list[Enlist]

    def commands(self) -> list[Command]:
        return [*([self.begin] if self.begin is not None else []), *self.enlists]

    def then(self, decision: Decide, *before: Command) -> list[Command]:
        """The proposal: these commands, then `before`, then `decision` (same txid)."""
        assert all(c.txid == decision.txid for c in (*self.commands(), *before))
        return [*self.commands(), *before, decision]


class Engine:
    def __init__(
        self,
        settings: Settings,
        log_: CommandLog,
        store: Store,
        client: ParticipantClient,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.log = log_
        self.store = store
        # Timed under the batcher: the dashboard's participant latency is each request's.
        timed = metrics.timed(client)
        # Commit and abort messages to one participant travel in batches under load; a
        # stand-in client without `call_batch` (tests) is used as it is.
        self.batcher: Phase2Batcher | None = None
        self.client: ProtocolCaller = timed
        if callable(getattr(client, "call_batch", None)):
            self.batcher = Phase2Batcher(
                timed,
                max_batch=settings.phase2_batch_max,
                max_inflight=settings.phase2_batch_inflight,
            )
            self.client = self.batcher
        # Phase 2's acknowledgements of many transactions share log entries under load
        # (where a proposal is an entry of its own: the Raft log).
        self.results_log: ProposalCoalescer | None = None
        if settings.phase2_coalesce_results and getattr(log_, "entry_per_proposal", False):
            self.results_log = ProposalCoalescer(log_, max_commands=MAX_COALESCED_COMMANDS)
        self.metrics = metrics
        self.clock = clock
        self._commits: dict[str, asyncio.Task[Transaction]] = {}
        self._phase2: dict[str, asyncio.Task[None]] = {}
        self._phase2_wakeup: dict[str, asyncio.Event] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._epoch = 0
        self._phase2_slots = asyncio.Semaphore(settings.max_inflight_phase2)
        self._courtesy: set[asyncio.Task[None]] = set()
        self._courtesy_slots = asyncio.Semaphore(MAX_COURTESY_INFLIGHT)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name="txc-supervisor")

    async def stop(self) -> None:
        tasks: list[asyncio.Task[object]] = []
        if self._supervisor is not None:
            tasks.append(self._supervisor)  # type: ignore[arg-type]
        tasks.extend(self._phase2.values())  # type: ignore[arg-type]
        tasks.extend(self._commits.values())  # type: ignore[arg-type]
        tasks.extend(self._courtesy)  # type: ignore[arg-type]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.batcher is not None:
            await self.batcher.stop()
        if self.results_log is not None:
            await self.results_log.stop()

    # -- client calls ---------------------------------------------------------------------

    async def _propose_one(self, cmd: Command) -> Result:
        [result] = await self.log.propose([cmd])
        return result

    async def begin(
        self, timeout_s: float | None, labels: dict[str, str], idempotency_key: str | None
    ) -> tuple[Transaction, bool]:
        """Returns the transaction and whether this call created it."""
        # Without a key the txid is random: the store applies such a Begin without looking
        # for an existing record (coordinator/store.py `_reads`).
        txid = txid_for_key(idempotency_key) if idempotency_key else str(uuid.uuid4())
        cmd = Begin(
            txid=txid,
            at=self.clock(),
            timeout_s=timeout_s or self.settings.default_timeout_s,
            labels=labels,
            idempotency_key=idempotency_key,
        )
        r = await self._propose_one(cmd)
        assert r.txn is not None
        if r.status is Status.CREATED:
            self.metrics.begun.inc()
        return r.txn, r.status is Status.CREATED

    async def enlist(self, txid: str, name: str, url: str, vote: Vote | None) -> Transaction:
        r = await self._propose_one(
            Enlist(txid=txid, at=self.clock(), name=name, url=url, vote=vote)
        )
        if not r.ok:
            raise EngineError(r.status, r.message, r.txn)
        assert r.txn is not None
        return r.txn

    async def get(self, txid: str, linearizable: bool = True) -> Transaction | None:
        if linearizable:
            await self.log.read_barrier()
        return await self.store.get(txid)

    async def commit(self, txid: str, carried: Carried | None = None) -> Transaction:
        """Run 2PC (or join the run already going for this transaction) and return the
        transaction once decided; waits a little for phase 2 so the answer is usually final.

        `carried`: a lazy begin and the enlistments the client brings along (see `Carried`),
        applied in the same log round as the decision."""
        # No read barrier: the flow's first command goes through the log, and its result is
        # the transaction's state at that point (linearizable by construction).
        t = await asyncio.shield(self._commit_task(txid, carried))
        return await self._wait_phase2(t)

    def carried(
        self,
        txid: str,
        enlist: list[tuple[str, str, Vote | None]],
        begin: tuple[float | None, dict[str, str]] | None,
    ) -> Carried:
        """The commands a commit brings along, stamped now: enlistments (name, url, vote)
        and a lazy begin (timeout_s, labels) or None."""
        at = self.clock()
        lazy = None
        if begin is not None:
            timeout_s, labels = begin
            lazy = Begin(
                txid=txid,
                at=at,
                timeout_s=timeout_s or self.settings.default_timeout_s,
                labels=dict(labels),
            )
        enlists = [Enlist(txid=txid, at=at, name=n, url=u, vote=v) for n, u, v in enlist]
        return Carried(lazy, enlists)

    def _commit_task(self, txid: str, carried: Carried | None) -> asyncio.Task[Transaction]:
        task = self._commits.get(txid)
        if task is None:
            # A commit already running for this txid is joined as it is: its own carried
            # commands (if any) stand; a repeat's are the same ones, and an enlistment left
            # out is a prepared participant that its recovery resolves by the outcome.
            task = asyncio.create_task(self._commit_flow(txid, carried), name=f"txc-commit-{txid}")
            self._commits[txid] = task
            task.add_done_callback(lambda _t: self._commits.pop(txid, None))
        return task

    async def abort(
        self, txid: str, reason: str = "aborted by client", carried: Carried | None = None
    ) -> Transaction:
        if carried is not None and (carried.begin is not None or await self.get(txid)):
            # One round: the lazy begin and enlistments, then the decision (a no-op if the
            # transaction is already decided: the first decision stands). Without a begin,
            # an unknown txid is a 404 as with a plain abort (below), not a new record.
            decision = Decide(txid=txid, at=self.clock(), outcome=Outcome.ABORT, reason=reason)
            results = await self.log.propose(carried.then(decision))
            self._note_carried(carried, results)
            r = results[-1]
            if r.txn is None:
                raise EngineError(r.status, r.message)
            if r.changed:
                self._after_decision(r.txn)
            return await self._wait_phase2(r.txn)
        t = await self.get(txid)
        if t is None:
            raise EngineError(Status.NOT_FOUND, f"transaction {txid} not found")
        if t.outcome is None:
            r = await self._propose_one(
                Decide(txid=txid, at=self.clock(), outcome=Outcome.ABORT, reason=reason)
            )
            assert r.txn is not None
            t = r.txn
            self._after_decision(t)
        return await self._wait_phase2(t)

    async def outcome(self, txid: str) -> Outcome | None:
        """A participant in doubt asks. Unknown → a durable ABORT (presumed abort, rule 3);
        expired and undecided → ABORT now; otherwise the outcome, or None while pending."""
        t = await self.get(txid)
        now = self.clock()
        if t is not None and t.outcome is not None:
            return t.outcome
        if t is None:
            reason = "presumed abort: unknown transaction"
        elif now >= t.expires_at:
            reason = "transaction expired"
        else:
            return None
        r = await self._propose_one(Decide(txid=txid, at=now, outcome=Outcome.ABORT, reason=reason))
        assert r.txn is not None and r.txn.outcome is not None
        self._after_decision(r.txn)
        return r.txn.outcome

    async def acknowledge_heuristic(self, txid: str) -> Transaction:
        r = await self._propose_one(AcknowledgeHeuristic(txid=txid, at=self.clock()))
        if not r.ok:
            raise EngineError(r.status, r.message, r.txn)
        assert r.txn is not None
        return r.txn

    def retry_now(self, txid: str) -> bool:
        """Wake the phase-2 driver of `txid` (an operator's "retry now")."""
        ev = self._phase2_wakeup.get(txid)
        if ev is None:
            return False
        ev.set()
        return True

    # -- phase 1 ----------------------------------------------------------------------------

    async def _commit_flow(self, txid: str, carried: Carried | None) -> Transaction:
        with tracing.span("txc.commit", **{"txc.txid": txid}) as span:
            t = await self._commit_flow_traced(txid, carried)
            if span is not None and t.outcome is not None:
                span.set_attribute("txc.outcome", t.outcome.value)
            return t

    async def _commit_flow_traced(self, txid: str, carried: Carried | None) -> Transaction:
        txid_var.set(txid)
        started = self.clock()
        known = self.store.inflight.get(txid)
        if carried is not None or (
            known is not None
            and known.outcome is None
            and known.participants
            and all(p.vote in (Vote.YES, Vote.READ_ONLY) for p in known.participants)
        ):
            # Every participant prepared before enlisting (the SDK's way), or the client
            # brings the enlistments (and the begin): close enlistment and decide in one log
            # round. If a vote turns out to be missing when applied, the conditional
            # decision is a no-op and phase 1 runs below as usual.
            start = StartPrepare(txid=txid, at=started)
            decide = Decide(txid=txid, at=started, outcome=Outcome.COMMIT, only_if_unanimous=True)
            results = await self.log.propose(
                carried.then(decide, start) if carried is not None else [start, decide]
            )
            first, decided = results[-2], results[-1]
            if carried is not None:
                self._note_carried(carried, results)
            if first.txn is None:
                raise EngineError(first.status, first.message)
            if decided.txn is not None and decided.txn.outcome is not None:
                if decided.changed:
                    self.metrics.observe_decision(decided.txn, self.clock() - started)
                    self._after_decision(decided.txn)
                return decided.txn
            r = first
        else:
            r = await self._propose_one(StartPrepare(txid=txid, at=started))
        if r.txn is None:
            raise EngineError(r.status, r.message)
        t = r.txn
        if t.outcome is not None:
            return t
        now = self.clock()
        budget = min(self.settings.prepare_timeout_s, t.expires_at - now)
        ask = [p for p in t.participants if p.vote is None]
        silent: list[Participant] = []  # asked, and no answer we could read
        commands: list[Command] = []
        if budget <= 0:
            decision = Decide(
                txid=txid,
                at=now,
                outcome=Outcome.ABORT,
                reason="transaction expired before prepare",
            )
        else:
            replies = await asyncio.gather(*(self._prepare(t, p, budget) for p in ask))
            unanimous = True
            reasons: list[str] = []
            for p, reply in zip(ask, replies, strict=True):
                if not reply.answered:
                    silent.append(p)
                commands.append(
                    RecordVote(
                        txid=txid,
                        at=self.clock(),
                        name=p.name,
                        vote=reply.vote,
                        reason=reply.reason,
                    )
                )
                if reply.vote is Vote.NO:
                    unanimous = False
                    reasons.append(f"{p.name}: {reply.reason or 'voted no'}")
            decision = Decide(
                txid=txid,
                at=self.clock(),
                outcome=Outcome.COMMIT if unanimous else Outcome.ABORT,
                reason=None if unanimous else "; ".join(reasons),
            )
        # Votes and the decision go in one proposal: one log round; the state machine checks
        # the recorded votes again before it accepts a COMMIT (rule 2).
        results = await self.log.propose([*commands, decision])
        final = results[-1].txn
        assert final is not None and final.outcome is not None
        self.metrics.observe_decision(final, self.clock() - started)
        self._after_decision(final)
        if final.outcome is Outcome.ABORT and silent:
            self._courtesy_aborts(final, silent)
        return final

    def _note_carried(self, carried: Carried, results: list[Result]) -> None:
        if carried.begin is not None and results[0].status is Status.CREATED:
            self.metrics.begun.inc()
        offset = 1 if carried.begin is not None else 0
        for cmd, r in zip(carried.enlists, results[offset:], strict=False):
            if not r.ok and r.txn is not None and not r.txn.state.decided:
                # e.g. a name enlisted under another URL: that participant is not asked,
                # its prepared work follows the outcome through its recovery (it asks).
                log.warning("carried enlistment of %s refused: %s", cmd.name, r.message)

    def _courtesy_aborts(self, t: Transaction, silent: list[Participant]) -> None:
        """One abort message, not tracked, to each participant that did not answer prepare.

        Why: presumed abort does not need it (a participant that prepared and hears nothing
        asks for the outcome and is told ABORT), and phase 2 does not wait for it (a
        participant that is gone would keep the transaction unfinished for ever, when the
        outcome is already safe). But a participant that prepared late (after
        prepare_timeout_s) or failed to answer (a 5xx) would otherwise hold its prepared
        work, and its locks, until its next recovery pass."""
        for p in silent:
            if len(self._courtesy) >= MAX_COURTESY_ABORTS:
                self.metrics.courtesy_aborts_skipped.inc()
                continue
            task = asyncio.create_task(
                self._courtesy_abort(t.txid, p), name=f"txc-courtesy-abort-{t.txid}"
            )
            self._courtesy.add(task)
            task.add_done_callback(self._courtesy.discard)

    async def _courtesy_abort(self, txid: str, p: Participant) -> None:
        try:
            async with self._courtesy_slots:
                reply = await self.client.call(
                    p.url, "abort", txid, p.name, COURTESY_ABORT_TIMEOUT_S
                )
        except Exception as e:  # e.g. the engine stopped meanwhile: best effort only
            log.debug("courtesy abort of %s to %s not sent: %s", txid, p.name, e)
            return
        self.metrics.participant_call(p.name, reply)
        if reply.status != 200:
            log.info(
                "courtesy abort of %s to %s not acknowledged (%s); its recovery will ask",
                txid,
                p.name,
                reply.error or f"HTTP {reply.status}",
            )

    async def _prepare(self, t: Transaction, p: Participant, budget: float) -> VoteReply:
        reply = await self.client.call(p.url, "prepare", t.txid, p.name, budget)
        self.metrics.participant_call(p.name, reply)
        return interpret_prepare(reply)

    # -- phase 2 ----------------------------------------------------------------------------

    def _after_decision(self, t: Transaction) -> None:
        if t.state in (TxState.COMMITTING, TxState.ABORTING) and self.log.is_leader():
            self._ensure_phase2(t.txid)

    def _ensure_phase2(self, txid: str) -> None:
        task = self._phase2.get(txid)
        if task is not None and not task.done():
            return
        self._phase2_wakeup[txid] = asyncio.Event()
        task = asyncio.create_task(self._drive_phase2(txid), name=f"txc-phase2-{txid}")
        self._phase2[txid] = task

        def done(_t: asyncio.Task[None]) -> None:
            if self._phase2.get(txid) is task:
                self._phase2.pop(txid, None)
                self._phase2_wakeup.pop(txid, None)

        task.add_done_callback(done)

    async def _wait_phase2(self, t: Transaction) -> Transaction:
        task = self._phase2.get(t.txid)
        if task is not None and not t.state.terminal:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), self.settings.phase2_inline_wait_s)
            latest = await self.store.get(t.txid)
            if latest is not None:
                return latest
        return t

    async def _drive_phase2(self, txid: str) -> None:
        """Until every participant acknowledged: capped exponential backoff, never giving up
        (rule 6). Each failed message is recorded so that operators see why."""
        txid_var.set(txid)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Phase2Incomplete),
            wait=wait_exponential_jitter(
                multiplier=self.settings.phase2_backoff_initial_s,
                max=self.settings.phase2_backoff_max_s,
                jitter=self.settings.phase2_backoff_initial_s,
            ),
            sleep=self._phase2_sleep(txid),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._phase2_round(txid)
        except _LeadershipLost:
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("phase 2 driver for %s stopped; the supervisor restarts it", txid)

    def _phase2_sleep(self, txid: str) -> Callable[[float], Awaitable[None]]:
        async def sleep(seconds: float) -> None:
            ev = self._phase2_wakeup.get(txid)
            if ev is None:
                await asyncio.sleep(seconds)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), seconds)
            ev.clear()

        return sleep

    async def _phase2_round(self, txid: str) -> None:
        if not self.log.is_leader():
            raise _LeadershipLost()
        t = self.store.inflight.get(txid)
        if t is None or t.state.terminal:
            return
        assert t.outcome is not None, "phase 2 before a decision"
        pending = [p for p in t.participants if p.phase2 is Phase2.PENDING]
        if not pending:
            return
        action = "commit" if t.outcome is Outcome.COMMIT else "abort"
        async with self._phase2_slots:
            replies = await asyncio.gather(
                *(
                    self.client.call(
                        p.url, action, txid, p.name, self.settings.phase2_request_timeout_s
                    )
                    for p in pending
                )
            )
        commands: list[Command] = []
        incomplete = False
        for p, reply in zip(pending, replies, strict=True):
            self.metrics.participant_call(p.name, reply)
            done, heuristic = interpret_phase2(action, reply)
            now = self.clock()
            if done:
                commands.append(Ack(txid=txid, at=now, name=p.name, heuristic=heuristic))
            else:
                incomplete = True
                self.metrics.phase2_retries.inc()
                commands.append(
                    Phase2Attempt(txid=txid, at=now, name=p.name, error=reply.error or "no answer")
                )
        # Each command stands alone (applied to this transaction only): it may share an entry.
        await (self.results_log or self.log).propose(commands)
        if incomplete:
            raise _Phase2Incomplete()

    # -- supervision: resume after start or leader change; time out expired transactions ----

    async def _supervise(self) -> None:
        while True:
            try:
                await self._supervise_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("supervisor pass failed: %s: %s", type(e).__name__, e)
            await asyncio.sleep(self.settings.sweep_interval_s)

    async def _supervise_once(self) -> None:
        if not self.log.is_leader():
            if self._phase2:
                for task in list(self._phase2.values()):
                    task.cancel()
            return
        epoch = self.log.leadership_epoch()
        if epoch != self._epoch:
            self._epoch = epoch
            log.info(
                "leading (epoch %s): resuming %d unfinished transactions",
                epoch,
                len(self.store.inflight),
            )
        now = self.clock()
        expired: list[Command] = []
        for t in list(self.store.inflight.values()):
            if t.state in (TxState.COMMITTING, TxState.ABORTING):
                self._ensure_phase2(t.txid)
            elif t.outcome is None and now >= t.expires_at:
                expired.append(
                    Decide(
                        txid=t.txid, at=now, outcome=Outcome.ABORT, reason="transaction timed out"
                    )
                )
            elif t.state is TxState.PREPARING and t.txid not in self._commits:
                # A commit whose driver died with the previous leader or process: run it again
                # (prepare is idempotent at participants).
                self._commit_task(t.txid, None)
        if expired:
            results = await self.log.propose(expired)
            for r in results:
                if r.txn is not None:
                    self.metrics.observe_decision(r.txn, None)
                    self._after_decision(r.txn)


class _LeadershipLost(Exception):
    pass


def interpret_prepare(reply: Reply) -> VoteReply:
    """DESIGN §5: 200 yes/read_only, 409 no; anything else (no answer, an error, a body we
    cannot read) counts as NO (rule 2 commits only on unanimous YES), marked unanswered."""
    vote = reply.body.get("vote")
    if reply.status == 200 and vote in (Vote.YES.value, Vote.READ_ONLY.value):
        return VoteReply(Vote(vote), None)
    if reply.status == 409:
        reason = reply.body.get("reason") or reply.error or "voted no"
        return VoteReply(Vote.NO, str(reason))
    return VoteReply(
        Vote.NO,
        reply.error or f"prepare: unexpected answer HTTP {reply.status}",
        answered=False,
    )


def interpret_phase2(action: str, reply: Reply) -> tuple[bool, str | None]:
    """Whether the participant acknowledged, and the heuristic outcome it reported if any."""
    if reply.status == 200:
        return True, None
    code = reply.error_code
    if reply.status == 409 and code in ("heuristic_abort", "heuristic_commit"):
        return True, code.removeprefix("heuristic_")
    if reply.status == 404 and code == "unknown_transaction":
        # Abort: nothing was prepared there. Commit: the participant lost the transaction.
        return True, None if action == "abort" else "unknown"
    return False, None
