"""In-doubt resolution: finish prepared work whose outcome this participant never heard.

A participant that prepared and then heard nothing (it crashed, the coordinator's phase 2
has not reached it yet, or its enlistment's fate is unknown) asks the coordinator
`GET /v1/transactions/{txid}/outcome` and applies the answer (DESIGN §5). This runs on
start-up and every RECOVERY_INTERVAL_S, and as a one-shot function (`resolve_in_doubt`) that
a CLI can call, with `dry_run=True` to only report.

What is decided without asking (all under the participant's per-txid lock, re-checked):
- prepared work with *no record*: the process died between PREPARE TRANSACTION and writing
  the record, i.e. before enlisting (the record is written first), so no coordinator counts
  on it: roll it back;
- record 'aborted' but work still prepared: an abort that did not finish: roll back;
- record 'committed' but work still prepared: a commit that did not finish: commit;
- record 'prepared' but no prepared work (PostgreSQL): COMMIT PREPARED ran and the process
  died before updating the record (rollbacks always record 'aborted' first): mark committed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from participant_sdk.errors import TxcError

if TYPE_CHECKING:
    from participant_sdk.participant import ParticipantBase

log = logging.getLogger("txc.sdk.recovery")

RECOVERY_INTERVAL_S = 5.0  # between two periodic passes
RECOVERY_STOP_TIMEOUT_S = 30.0  # how long stop() waits for a pass in progress
MAX_IN_DOUBT_PER_PASS = 1000  # bound on the candidates one pass looks at


@dataclass(frozen=True)
class InDoubt:
    """One candidate: what the resource holds and what the record says."""

    txid: str
    prepared: bool  # prepared work exists (PostgreSQL: the gid is in pg_prepared_xacts)
    record_state: str | None  # 'prepared' | 'committed' | 'aborted' | None (no record)
    gid: str | None = None
    coordinator_url: str | None = None

    def plan(self) -> str:
        """ask | commit | abort | abort_orphan | none."""
        if self.prepared:
            if self.record_state == "prepared":
                return "ask"
            if self.record_state == "aborted":
                return "abort"
            if self.record_state == "committed":
                return "commit"
            return "abort_orphan"
        if self.record_state == "prepared":
            return "commit"  # committed before a crash; only the record lags
        return "none"


@dataclass
class RecoveryItem:
    txid: str
    gid: str | None
    prepared: bool
    record_state: str | None
    outcome: str | None = None  # the coordinator's answer, when asked
    action: str = "none"  # what was done, or would be done with dry_run
    error: str | None = None


@dataclass
class RecoveryReport:
    participant: str
    dry_run: bool
    items: list[RecoveryItem] = field(default_factory=list)

    @property
    def found(self) -> int:
        return len(self.items)

    def actions(self) -> dict[str, str]:
        return {i.txid: i.action for i in self.items}

    def to_dict(self) -> dict[str, object]:
        return {
            "participant": self.participant,
            "dry_run": self.dry_run,
            "items": [asdict(i) for i in self.items],
        }


def _apply(participant: ParticipantBase, txid: str, what: str) -> str:
    """Run one resolving step through the participant's own (idempotent) handlers."""
    if what == "abort_orphan":
        return participant.abort_orphan(txid)
    reply = participant.commit(txid) if what == "commit" else participant.abort(txid)
    done = "committed" if what == "commit" else "rolled_back"
    if reply.status == 200:
        return done
    err = reply.body.get("error") or {}
    return f"{what}_answered_{reply.status}:{err.get('code', '')}"


def resolve_in_doubt(
    participant: ParticipantBase,
    *,
    dry_run: bool = False,
    min_age_s: float = 0.0,
    start_after: str | None = None,
) -> RecoveryReport:
    """Look at every in-doubt transaction of `participant` and resolve what can be resolved.

    Returns what was found and, per txid, the action taken ("committed", "rolled_back",
    "left_pending", ...) or, with `dry_run=True`, the one it would take ("would_commit", ...).
    A dry run changes nothing here; note that it still asks the coordinator, and the
    coordinator turns an unknown txid into a durable abort (presumed abort, DESIGN §3.3).
    Errors for one txid are reported and do not stop the pass. `min_age_s` leaves out work
    prepared more recently than that; a pass looks at MAX_IN_DOUBT_PER_PASS candidates at
    most, in txid order from just after `start_after` round to the start (see RecoveryLoop).
    """
    report = RecoveryReport(participant.name, dry_run)
    for cand in _rotated(participant.in_doubt(min_age_s), start_after)[:MAX_IN_DOUBT_PER_PASS]:
        item = RecoveryItem(cand.txid, cand.gid, cand.prepared, cand.record_state)
        report.items.append(item)
        try:
            what = cand.plan()
            if what == "none":
                continue
            if what == "ask":
                item.outcome = participant.coordinator_for(cand.coordinator_url).outcome(cand.txid)
                if item.outcome == "pending":
                    item.action = "left_pending"
                    continue
                what = item.outcome  # "commit" | "abort"
            if dry_run:
                item.action = f"would_{what}"
                continue
            item.action = _apply(participant, cand.txid, what)
        except TxcError as e:
            item.action = "error"
            item.error = str(e)
        except Exception as e:  # a database hiccup must not kill the loop
            log.exception("recovery of %s/%s failed", participant.name, cand.txid)
            item.action = "error"
            item.error = f"{type(e).__name__}: {e}"
    return report


def _rotated(cands: list[InDoubt], start_after: str | None) -> list[InDoubt]:
    """Candidates in txid order, starting just after `start_after` and wrapping round."""
    cands = sorted(cands, key=lambda c: c.txid)
    if start_after is None:
        return cands
    later = [c for c in cands if c.txid > start_after]
    return later + cands[: len(cands) - len(later)]


class RecoveryLoop:
    """A daemon thread running `resolve_in_doubt` at start and then every `interval_s`.

    The first pass looks at everything (what a crash left behind). Later passes leave out work
    prepared within the last `interval_s`: under load that is the normal in-flight work, whose
    phase 2 is on its way, and asking the coordinator about each of it cost ~3% of a bank's
    CPU in `txc bench transfers` (plus a linearizable read on the leader per txid, and a
    careful phase 2 when recovery finished it first). Anything left out is looked at by the
    next pass, so in-doubt work waits at most two intervals instead of one. A pass that hit
    MAX_IN_DOUBT_PER_PASS makes the next one start after the last txid it looked at, so that
    many transactions left pending cannot hide the others for ever."""

    def __init__(self, participant: ParticipantBase, interval_s: float = RECOVERY_INTERVAL_S):
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.participant = participant
        self.interval_s = interval_s
        self.last_report: RecoveryReport | None = None
        self.passes = 0
        self._cursor: str | None = None  # where the next pass starts (after a full pass)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"txc-recovery-{participant.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(RECOVERY_STOP_TIMEOUT_S)

    def next_min_age_s(self) -> float:
        """The age bound of the next pass: none for the first, the interval after that."""
        return self.interval_s if self.passes else 0.0

    def run_once(self) -> RecoveryReport:
        """One pass, as the loop runs it (age bound, where to start), logging what it did."""
        report = resolve_in_doubt(
            self.participant, min_age_s=self.next_min_age_s(), start_after=self._cursor
        )
        self.last_report = report
        self.passes += 1
        full = len(report.items) >= MAX_IN_DOUBT_PER_PASS
        self._cursor = report.items[-1].txid if full else None
        for item in report.items:
            if item.action not in ("none", "left_pending"):
                log.info(
                    "recovery %s %s: %s %s",
                    self.participant.name,
                    item.txid,
                    item.action,
                    item.error or "",
                )
        return report

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("recovery pass of %s failed", self.participant.name)
            self._stop.wait(self.interval_s)


if __name__ == "__main__":  # `python -m participant_sdk.recovery`, the documented command
    from participant_sdk.recovery_cli import main

    raise SystemExit(main())
