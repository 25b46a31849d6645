"""`txc audit`: reconcile the coordinator's decisions with what participants hold.

Read-only on both sides: participant databases are read through read-only connections, and
the coordinator only through GETs (never `/outcome`, which would make a presumed abort
durable).

For each participant P the audit gathers
- at P: its SDK records (`txc_participant_record`: prepared / committed / aborted) and its
  prepared transactions (`txc:P:<txid>` gids in `pg_prepared_xacts`; on MariaDB/MySQL its XA
  branches in `XA RECOVER`, read by `audit_mysql.py`);
- at the coordinator: every transaction that enlisted P (`GET /v1/transactions?participant=P`,
  all pages), and each transaction P holds work for that the listing did not return (a
  forgotten one answers from the coordinator's history, or only with its decision when the
  answering node has no history of it: docs/retention.md). Transactions forgotten by
  retention are not listed, so `missing` is found only within `retention_s`.

What P holds for a txid, in one word (the SDK's rules, participant_sdk/record.py):
`prepared` (the gid exists), `committed` (record committed, or record 'prepared' with no gid:
COMMIT PREPARED ran and the record lags), `aborted`, or nothing.

Findings (`kind`):
- `orphan`: prepared at P, but the coordinator will never finish it here: it has no record
  of the transaction, P is not enlisted in it, or it aborted and considers P done.
  `txc recover --participant P --apply` rolls it back.
- `in_doubt`: prepared at P while the transaction is undecided, or decided COMMIT with P's
  phase 2 considered done. `txc recover` resolves it.
- `phase2_pending`: decided, and the coordinator is still driving P (attempts, last error).
- `mismatch`: P's outcome contradicts the decision (a heuristic outcome), or P committed work
  for a transaction the coordinator has no record of or has not decided.
- `missing`: the coordinator has P's acknowledgement of a COMMIT but P has no record of the
  transaction at all (P's database lost or restored from an older backup?).

A finding is a *problem* unless it is normal in-flight work: `orphan`, `in_doubt` and
`phase2_pending` younger than `grace_s` are listed but not counted. `mismatch` and `missing`
always count, except a heuristic outcome an operator has already acknowledged.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Engine, bindparam, text
from sqlalchemy.exc import ArgumentError, DBAPIError

from coordinator.ops import audit_mysql
from coordinator.ops.common import (
    EXIT_ATTENTION,
    Coordinator,
    OpsError,
    parse_iso,
    participant_engine,
    redact,
)
from participant_sdk.headers import gid_prefix, parse_gid, validate_participant_name
from participant_sdk.mysql_resource import is_mysql

MAX_RECORDS = 200_000  # bound on the SDK records one audit reads per participant
LOOKUP_CHUNK = 500
DEFAULT_GRACE_S = 60.0
MAX_ERROR_CHARS = 80  # of a participant's last error, in a finding's detail


@dataclass
class Local:
    """What one participant holds for one txid."""

    prepared: bool = False
    prepared_at: float | None = None
    record: str | None = None
    record_updated_at: float | None = None

    @property
    def state(self) -> str | None:
        if self.prepared:
            return "prepared"
        if self.record == "prepared":
            return "committed"  # nothing prepared any more: COMMIT PREPARED ran
        return self.record

    def describe(self) -> str:
        if self.prepared:
            return f"prepared (record {self.record or 'none'})"
        if self.record == "prepared":
            return "committed (record lags: 'prepared')"
        return self.record or "no trace"


@dataclass
class Finding:
    participant: str
    txid: str
    kind: str
    problem: bool
    local: str
    coordinator: str
    since: float | None  # when the situation started (prepared, decided, ...)
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ParticipantAudit:
    participant: str
    database: str
    checked: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return sum(1 for f in self.findings if f.problem)


@dataclass
class AuditResult:
    coordinator: str
    since_s: float | None
    grace_s: float
    participants: list[ParticipantAudit]

    @property
    def problems(self) -> int:
        return sum(p.problems for p in self.participants)

    def exit_code(self) -> int:
        return EXIT_ATTENTION if self.problems else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "coordinator": self.coordinator,
            "since_s": self.since_s,
            "grace_s": self.grace_s,
            "clean": self.problems == 0,
            "problems": self.problems,
            "participants": [
                {
                    "participant": p.participant,
                    "database": p.database,
                    "checked": p.checked,
                    "problems": p.problems,
                    "findings": [f.to_dict() for f in p.findings],
                }
                for p in self.participants
            ],
            "exit_code": self.exit_code(),
        }


def _coord_desc(t: dict[str, Any] | None, p: dict[str, Any] | None) -> str:
    if t is None:
        return "unknown"
    s = f"{t['state']}"
    if p is None:
        return s + " (not enlisted)"
    s += f", vote {p.get('vote') or '-'}, phase2 {p.get('phase2')}"
    if p.get("heuristic"):
        s += f", heuristic {p['heuristic']}"
    return s


def classify(
    name: str,
    txid: str,
    local: Local,
    t: dict[str, Any] | None,
    now: float,
    grace_s: float,
) -> Finding | None:
    """The finding for one txid, or None when P and the coordinator agree."""
    p = None
    if t is not None:
        p = next((x for x in t.get("participants", []) if x.get("name") == name), None)
    outcome = t.get("outcome") if t else None
    phase2 = p.get("phase2") if p else None
    decided_at = parse_iso(t.get("decided_at")) if t else None
    L = local.state

    def f(kind: str, since: float | None, detail: str, problem: bool | None = None) -> Finding:
        if problem is None:
            problem = since is None or now - since >= grace_s
        here, there = local.describe(), _coord_desc(t, p)
        return Finding(name, txid, kind, problem, here, there, since, detail)

    def pending_detail() -> str:
        assert p is not None
        last = str(p.get("last_error") or "")
        if len(last) > MAX_ERROR_CHARS:
            last = last[: MAX_ERROR_CHARS - 3] + "..."
        err = f", last error: {last}" if last else ""
        return f"coordinator still sending {outcome} ({p.get('attempts', 0)} attempts{err})"

    heuristic_ack = bool(t and t.get("heuristic_acknowledged"))
    if L == "prepared":
        since = local.prepared_at
        if t is None:
            return f("orphan", since, "prepared here; the coordinator has no record of it")
        if p is None and t.get("source") == "tombstone":
            # Forgotten, and the answering node kept no history of it: who was enlisted is
            # not known, only the decision, which `txc recover` applies.
            return f(
                "in_doubt",
                since,
                f"{outcome} decided (forgotten: only its decision is kept); still prepared here",
            )
        if p is None:
            return f("orphan", since, "prepared here; not enlisted in this transaction")
        if outcome is not None and phase2 == "pending":
            return f("phase2_pending", decided_at, pending_detail())
        if outcome == "abort":
            return f("orphan", since, "aborted at the coordinator; still prepared here")
        if outcome == "commit":
            return f("in_doubt", since, "committed at the coordinator; still prepared here")
        return f("in_doubt", since, f"the transaction is {t['state']}: not decided yet")
    if L == "committed":
        if t is None:
            return f("mismatch", None, "committed here; the coordinator has no record of it")
        if outcome == "abort" and p is not None:
            known = " (flagged by the coordinator)" if p.get("heuristic") else ""
            return f(
                "mismatch",
                None,
                f"heuristic commit: committed here, ABORT decided{known}",
                problem=not heuristic_ack,
            )
        if outcome is None and p is not None:
            return f("mismatch", None, f"committed here while the transaction is {t['state']}")
        if outcome == "commit" and phase2 == "pending":
            return f("phase2_pending", decided_at, pending_detail())
        return None
    if L == "aborted":
        if t is not None and outcome == "commit" and p is not None:
            known = " (flagged by the coordinator)" if p.get("heuristic") else ""
            return f(
                "mismatch",
                None,
                f"heuristic abort: rolled back here, COMMIT decided{known}",
                problem=not heuristic_ack,
            )
        if outcome == "abort" and phase2 == "pending":
            return f("phase2_pending", decided_at, pending_detail())
        return None
    # No trace here.
    if p is None or outcome is None:
        return None
    if phase2 == "pending":
        return f("phase2_pending", decided_at, pending_detail())
    if (
        outcome == "commit"
        and phase2 == "done"
        and p.get("vote") == "yes"
        and not p.get("heuristic")
    ):
        return f(
            "missing",
            None,
            "the coordinator has this participant's acknowledgement of COMMIT, "
            "but there is no record of the transaction here",
        )
    return None


# -- reading a participant's database ----------------------------------------------------------


def _read_local(engine: Engine, name: str, since_s: float | None) -> dict[str, Local]:
    if is_mysql(engine):
        return audit_mysql.read_local(engine, name, since_s, MAX_RECORDS, LOOKUP_CHUNK)
    prefix = gid_prefix(name)
    out: dict[str, Local] = {}
    with engine.connect() as conn:
        if conn.execute(text("SELECT to_regclass('txc_participant_record')")).scalar() is None:
            raise OpsError(
                2, f"{name}: the database has no txc_participant_record table (not a participant?)"
            )
        rows = conn.execute(
            text(
                "SELECT gid, extract(epoch FROM prepared) FROM pg_prepared_xacts "
                "WHERE database = current_database() AND left(gid, length(:p)) = :p"
            ),
            {"p": prefix},
        )
        for gid, at in rows:
            parsed = parse_gid(gid)
            if parsed is not None and parsed[0] == name:
                out[parsed[1]] = Local(prepared=True, prepared_at=float(at))
        q = (
            "SELECT txid, state, extract(epoch FROM updated_at) FROM txc_participant_record "
            "WHERE participant = :n"
        )
        params: dict[str, Any] = {"n": name, "lim": MAX_RECORDS + 1}
        if since_s is not None:
            q += " AND updated_at >= now() - make_interval(secs => :since)"
            params["since"] = since_s
        recs = conn.execute(text(q + " ORDER BY updated_at DESC LIMIT :lim"), params).all()
        if len(recs) > MAX_RECORDS:
            raise OpsError(1, f"{name}: more than {MAX_RECORDS} records; narrow with --since")
        for txid, state, at in recs:
            loc = out.setdefault(txid, Local())
            loc.record, loc.record_updated_at = state, float(at)
    return out


def _records_of(engine: Engine, name: str, txids: list[str]) -> dict[str, tuple[str, float]]:
    if is_mysql(engine):
        return audit_mysql.records_of(engine, name, txids, LOOKUP_CHUNK)
    out: dict[str, tuple[str, float]] = {}
    stmt = text(
        "SELECT txid, state, extract(epoch FROM updated_at) FROM txc_participant_record "
        "WHERE participant = :n AND txid IN :t"
    ).bindparams(bindparam("t", expanding=True))
    with engine.connect() as conn:
        for i in range(0, len(txids), LOOKUP_CHUNK):
            chunk = txids[i : i + LOOKUP_CHUNK]
            for txid, state, at in conn.execute(stmt, {"n": name, "t": chunk}):
                out[txid] = (state, float(at))
    return out


def audit_participant(
    coord: Coordinator,
    name: str,
    database_url: str,
    *,
    since_s: float | None,
    grace_s: float,
    now: float | None = None,
) -> ParticipantAudit:
    try:
        engine = participant_engine(database_url, read_only=True)
    except ArgumentError as e:
        raise OpsError(2, f"{name}: bad database URL: {e}") from None
    result = ParticipantAudit(name, redact(database_url))
    try:
        try:
            local = _read_local(engine, name, since_s)
            coordinated = {t["txid"]: t for t in coord.transactions_of(name, since_s)}
            # Transactions the coordinator listed that the window of records did not cover.
            missing = [x for x in coordinated if x not in local]
            for txid, (state, at) in _records_of(engine, name, missing).items():
                local[txid] = Local(record=state, record_updated_at=at)
        except DBAPIError as e:
            raise OpsError(5, f"{name}: cannot read its database: {e.orig}") from None
        # Work held here for transactions the listing did not return: look them up one by one
        # (aborted records need no look-up: a txid P is enlisted in would have been listed).
        for txid, loc in local.items():
            if txid not in coordinated and loc.state in ("prepared", "committed"):
                t = coord.transaction(txid)
                if t is not None:
                    coordinated[txid] = t
        now = time.time() if now is None else now
        txids = sorted(set(local) | set(coordinated))
        result.checked = len(txids)
        for txid in txids:
            finding = classify(
                name, txid, local.get(txid, Local()), coordinated.get(txid), now, grace_s
            )
            if finding is not None:
                result.findings.append(finding)
    finally:
        engine.dispose()
    return result


def parse_participant(spec: str) -> tuple[str, str]:
    name, sep, url = spec.partition("=")
    if not sep or not url:
        raise OpsError(2, f"--participant expects NAME=DATABASE_URL, got {spec!r}")
    try:
        validate_participant_name(name)
    except ValueError as e:
        raise OpsError(2, str(e)) from None
    return name, url


def audit(
    specs: list[str],
    coordinator_urls: str,
    *,
    token: str | None,
    since_s: float | None,
    grace_s: float,
) -> AuditResult:
    parsed = [parse_participant(s) for s in specs]
    if len({n for n, _ in parsed}) != len(parsed):
        raise OpsError(2, "a participant is given twice")
    with Coordinator(coordinator_urls, token) as coord:
        parts = [
            audit_participant(coord, n, u, since_s=since_s, grace_s=grace_s) for n, u in parsed
        ]
        return AuditResult(",".join(coord.urls), since_s, grace_s, parts)
