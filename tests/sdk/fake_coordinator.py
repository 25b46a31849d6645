"""A tiny stand-in for the coordinator's public API (DESIGN §4), for the SDK's tests only.

It keeps transactions in memory and implements just enough to exercise the SDK: begin (with
idempotency keys), get, enlist, commit (a real, sequential 2PC over HTTP to the enlisted
participants, unless `drive_phase2` is off), abort, outcome (unknown -> durable abort), an
optional bearer token, fault injection (`inject`: answer the next N calls of one operation
with a given status/headers) and a follower mode (every call answers 503 with `Txc-Leader`).
It is NOT the coordinator: no Raft, no persistence, no timeouts, no retries of phase 2.
"""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from participant_sdk.signing import signed_headers

PARTICIPANT_TIMEOUT_S = 10.0


@dataclass
class FakeTx:
    txid: str
    state: str = "active"
    outcome: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    participants: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "txid": self.txid,
            "state": self.state,
            "outcome": self.outcome,
            "labels": self.labels,
            "expires_at": "2099-01-01T00:00:00Z",
            "participants": [{"name": n, **p} for n, p in self.participants.items()],
        }


def _err(status: int, code: str, message: str = "", **extra: Any) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": {"code": code, "message": message}, **extra}
    )


class FakeCoordinator:
    def __init__(self, token: str | None = None, drive_phase2: bool = True) -> None:
        self.token = token
        self.drive_phase2 = drive_phase2
        self.leader_url: str | None = None  # follower mode: answer 503 + Txc-Leader
        self.txs: dict[str, FakeTx] = {}
        self.keys: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []  # (operation, txid or "")
        self.phase2_replies: list[tuple[str, str, int]] = []  # (participant, action, status)
        self._inject: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self.app = self._build()

    # -- test knobs -------------------------------------------------------------------------

    def inject(self, op: str, status: int, times: int = 1, headers: dict[str, str] | None = None):
        self._inject.setdefault(op, []).extend([(status, headers or {})] * times)

    def set_outcome(self, txid: str, outcome: str | None) -> None:
        """Force a decision (or None: pending) without driving phase 2."""
        with self._lock:
            tx = self.txs.setdefault(txid, FakeTx(txid))
            tx.outcome = outcome
            tx.state = {"commit": "committed", "abort": "aborted", None: "active"}[outcome]

    def count(self, op: str) -> int:
        return sum(1 for o, _ in self.calls if o == op)

    # -- app ----------------------------------------------------------------------------------

    def _gate(self, request: Request, op: str, txid: str = "") -> JSONResponse | None:
        self.calls.append((op, txid))
        if self.leader_url:
            return JSONResponse(
                status_code=503,
                content={"error": {"code": "not_leader", "message": "ask the leader"}},
                headers={"Txc-Leader": self.leader_url},
            )
        if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
            return _err(401, "unauthorized", "token required")
        queue = self._inject.get(op)
        if queue:
            status, headers = queue.pop(0)
            return JSONResponse(
                status_code=status,
                headers=headers,
                content={"error": {"code": "injected", "message": op}},
            )
        return None

    def _send(self, url: str, action: str, txid: str, name: str) -> int | None:
        body = json.dumps({"txid": txid, "participant": name}).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers |= signed_headers(self.token, "POST", f"{url}/{action}", body)
        try:
            r = httpx.post(
                f"{url}/{action}",
                content=body,
                headers=headers,
                timeout=PARTICIPANT_TIMEOUT_S,
            )
        except httpx.HTTPError:
            self.phase2_replies.append((name, action, 0))
            return None
        self.phase2_replies.append((name, action, r.status_code))
        return r.status_code

    def _run_2pc(self, tx: FakeTx) -> None:
        tx.state = "preparing"
        ok = True
        for name, p in tx.participants.items():
            if p.get("vote") in ("yes", "read_only"):
                continue
            status = self._send(p["url"], "prepare", tx.txid, name)
            p["vote"] = "yes" if status == 200 else "no"
            ok = ok and status == 200
        self._decide(tx, "commit" if ok else "abort")

    def _decide(self, tx: FakeTx, outcome: str) -> None:
        tx.outcome = outcome
        tx.state = "committed" if outcome == "commit" else "aborted"
        if not self.drive_phase2:
            return
        for name, p in tx.participants.items():
            status = self._send(p["url"], outcome, tx.txid, name)
            p["phase2"] = "done" if status == 200 else "pending"

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/transactions")
        async def begin(request: Request) -> JSONResponse:
            if (r := self._gate(request, "begin")) is not None:
                return r
            body = await request.json()
            key = body.get("idempotency_key")
            with self._lock:
                if key and key in self.keys:
                    return JSONResponse(self.txs[self.keys[key]].to_dict(), status_code=200)
                txid = f"tx-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
                tx = FakeTx(txid, labels=body.get("labels") or {})
                self.txs[txid] = tx
                if key:
                    self.keys[key] = txid
                return JSONResponse(tx.to_dict(), status_code=201)

        @app.get("/v1/transactions/{txid}")
        def get(txid: str, request: Request) -> JSONResponse:
            if (r := self._gate(request, "get", txid)) is not None:
                return r
            tx = self.txs.get(txid)
            if tx is None:
                return _err(404, "not_found")
            return JSONResponse(tx.to_dict())

        @app.post("/v1/transactions/{txid}/participants")
        async def enlist(txid: str, request: Request) -> JSONResponse:
            if (r := self._gate(request, "enlist", txid)) is not None:
                return r
            body = await request.json()
            with self._lock:
                tx = self.txs.get(txid)
                if tx is None:
                    return _err(404, "not_found")
                name = body["name"]
                if name in tx.participants:
                    return JSONResponse(tx.to_dict(), status_code=201)
                if tx.state != "active":
                    return _err(409, "not_active", f"transaction is {tx.state}")
                tx.participants[name] = {"url": body["url"], "vote": body.get("vote")}
                return JSONResponse(tx.to_dict(), status_code=201)

        @app.post("/v1/transactions/{txid}/commit")
        def commit(txid: str, request: Request) -> JSONResponse:
            if (r := self._gate(request, "commit", txid)) is not None:
                return r
            with self._lock:
                tx = self.txs.get(txid)
                if tx is None:
                    return _err(404, "not_found")
                if tx.outcome is None:
                    self._run_2pc(tx)
                if tx.outcome == "abort":
                    return _err(409, "aborted", "transaction aborted", outcome="abort")
                return JSONResponse({"txid": txid, "outcome": "commit", "state": tx.state})

        @app.post("/v1/transactions/{txid}/abort")
        def abort(txid: str, request: Request) -> JSONResponse:
            if (r := self._gate(request, "abort", txid)) is not None:
                return r
            with self._lock:
                tx = self.txs.get(txid)
                if tx is None:
                    return _err(404, "not_found")
                if tx.outcome == "commit":
                    return _err(409, "committed", "already committed")
                if tx.outcome is None:
                    self._decide(tx, "abort")
                return JSONResponse({"txid": txid, "outcome": "abort", "state": tx.state})

        @app.get("/v1/transactions/{txid}/outcome")
        def outcome(txid: str, request: Request) -> JSONResponse:
            if (r := self._gate(request, "outcome", txid)) is not None:
                return r
            with self._lock:
                tx = self.txs.get(txid)
                if tx is None:  # presumed abort, made "durable"
                    tx = self.txs[txid] = FakeTx(txid, state="aborted", outcome="abort")
                return JSONResponse({"txid": txid, "outcome": tx.outcome or "pending"})

        return app
