"""What the dashboard shows, assembled on the node that serves it.

Any node serves the dashboard, and each shows what it knows first hand:

- transactions: this node's applied state (`store.inflight` and the transactions table),
  which every member of the group holds, so a follower shows the same as the leader, a few
  log entries behind at most;
- the cluster: this node's own Raft status, plus each member's status as that member reports
  it (`GET /v1/cluster`), fetched every `PEER_POLL_S`, which is also how node health is seen;
- activity and participants: only the leader runs 2PC, so only its `Metrics` count commits,
  aborts and participant calls. A follower relays them from the leader's
  `/dashboard/api/metrics`, keeping a mirror of the leader's series that it extends with the
  new seconds only.

Everything here is bounded (named limits below) and shared by all the streams a node serves:
the work is done at most once per `SNAPSHOT_CACHE_S` however many browsers watch.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter as Tally
from collections import deque
from typing import TYPE_CHECKING, Any

import httpx

from coordinator.auth import Role, parse_tokens
from coordinator.dashboard.series import SERIES_SPAN_S
from coordinator.http_common import txn_json
from coordinator.model import Phase2, Transaction
from coordinator.store import ListFilter

if TYPE_CHECKING:  # the node builds the app: no import at run time
    from coordinator.node import Node

SNAPSHOT_CACHE_S = 0.5  # a snapshot is rebuilt at most this often, whatever the number of streams
MAX_LIVE_ROWS = 200  # in-flight transactions sent to browsers: flagged first, then the oldest
MAX_RECENT_ROWS = 50  # newest transactions read from the table for "recently finished"
RECENT_REFRESH_S = 2.0  # how often that table query runs
PEER_POLL_S = 2.0  # how often each member's own view of the cluster is fetched
PEER_TIMEOUT_S = 1.0  # a member that does not answer within this is shown unreachable
LEADER_METRICS_REFRESH_S = 1.0  # how often a follower extends its mirror of the leader's series
LEADER_METRICS_TIMEOUT_S = 1.0
RECENT_LATENCY_S = 60  # the "commit latency p95" card covers this many seconds
MAX_MEMBERS = 9  # members whose views are fetched (a Raft group here has 1, 3 or 5)

FLAG_HEURISTIC = "heuristic"  # a participant did (or may have done) the opposite: act on it
FLAG_RETRYING = "retrying"  # phase 2 failed at least once for a participant still pending
FLAG_EXPIRED = "expired"  # undecided past its deadline: the leader should have aborted it


def service_token(settings: Any) -> str:
    """The token this node shows other members when it reads their status or the leader's
    activity: the least powerful configured one that may read. Members share the token
    configuration, and whoever sees the result has been authenticated already."""
    tokens = parse_tokens(settings.api_tokens, settings.api_token)
    for role in (Role.READ, Role.CLIENT, Role.ADMIN):
        for token, r in tokens.items():
            if r is role:
                return token
    return ""


def flags(t: Transaction, now: float) -> list[str]:
    """Why a transaction needs an operator's eyes, as far as its record tells. Age is judged
    in the browser, against a threshold the operator sets."""
    out: list[str] = []
    if t.heuristic is not None and not t.heuristic_acknowledged:
        out.append(FLAG_HEURISTIC)
    if any(
        p.phase2 is Phase2.PENDING and (p.last_error is not None or p.attempts > 1)
        for p in t.participants
    ):
        out.append(FLAG_RETRYING)
    if t.outcome is None and now >= t.expires_at:
        out.append(FLAG_EXPIRED)
    return out


def row(t: Transaction, now: float) -> dict[str, Any]:
    """The API's representation of a transaction, plus its age and flags."""
    return {**txn_json(t), "age_s": max(0.0, now - t.created_at), "flags": flags(t, now)}


def live_rows(inflight: list[Transaction], now: float) -> dict[str, Any]:
    """In-flight transactions for the table: flagged ones first, then the oldest first,
    at most `MAX_LIVE_ROWS` of them (with the totals, so the page can say what it left out)."""
    rows = [row(t, now) for t in inflight]
    rows.sort(key=lambda r: (not r["flags"], r["created_at"]))
    return {
        "total": len(rows),
        "by_state": dict(Tally(r["state"] for r in rows)),
        "flagged": sum(1 for r in rows if r["flags"]),
        "rows": rows[:MAX_LIVE_ROWS],
        "truncated": len(rows) > MAX_LIVE_ROWS,
        "max_rows": MAX_LIVE_ROWS,
    }


def slice_points(
    points: list[dict[str, Any]] | deque[dict[str, Any]], since: int | None
) -> list[dict[str, Any]]:
    return [p for p in points if since is None or p["t"] > since]


class LeaderMirror:
    """A follower's copy of the leader's activity series and participant figures."""

    def __init__(self) -> None:
        self.source: str | None = None
        self.points: deque[dict[str, Any]] = deque(maxlen=SERIES_SPAN_S)
        self.participants: list[dict[str, Any]] = []
        self.totals: dict[str, float] = {}
        self.recent_latency: dict[str, Any] | None = None
        self.error: str | None = None
        self.fetched_at = 0.0
        self.lock = asyncio.Lock()

    async def refresh(self, http: httpx.AsyncClient, leader_url: str, token: str) -> None:
        params: dict[str, Any] = {}
        if self.source is not None and self.points:
            params = {"source": self.source, "since": self.points[-1]["t"]}
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            r = await http.get(
                leader_url.rstrip("/") + "/dashboard/api/metrics",
                params=params,
                headers=headers,
                timeout=LEADER_METRICS_TIMEOUT_S,
            )
            r.raise_for_status()
            d = r.json()
        except (httpx.HTTPError, ValueError) as e:
            self.error = f"leader's metrics unavailable: {type(e).__name__}"
            return
        if d.get("full") or d.get("source") != self.source:
            self.points.clear()
        self.source = d.get("source")
        self.points.extend(d.get("points", []))
        self.participants = d.get("participants", [])
        self.totals = d.get("totals", {})
        self.recent_latency = d.get("recent_latency")
        self.error = None


class Feed:
    """Builds and caches what the dashboard streams; one per node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        # Identifies this process's Metrics: a browser that reconnects asks for the seconds
        # it has not seen, which only makes sense against the same series.
        self.source = f"{node.settings.node_id}/{uuid.uuid4().hex[:8]}"
        self._snapshot: dict[str, Any] | None = None
        self._snapshot_at = 0.0
        self._snapshot_lock = asyncio.Lock()
        self._recent: dict[str, Any] = {"rows": [], "error": None}
        self._recent_at = 0.0
        self._views: dict[str, dict[str, Any]] = {}
        self._views_at = 0.0
        self._views_task: asyncio.Task[None] | None = None
        self._mirror = LeaderMirror()
        self._token = service_token(node.settings)

    # -- transactions and cluster --------------------------------------------------------------

    async def snapshot(self) -> dict[str, Any]:
        async with self._snapshot_lock:
            mono = time.monotonic()
            if self._snapshot is None or mono - self._snapshot_at >= SNAPSHOT_CACHE_S:
                self._snapshot = await self._build_snapshot(mono)
                self._snapshot_at = mono
            return self._snapshot

    async def _build_snapshot(self, mono: float) -> dict[str, Any]:
        node = self.node
        now = time.time()
        status = node.log.status()
        if mono - self._recent_at >= RECENT_REFRESH_S:
            self._recent_at = mono
            self._recent = await self._read_recent(now)
        if mono - self._views_at >= PEER_POLL_S and (
            self._views_task is None or self._views_task.done()
        ):
            # In the background: a member that does not answer must not hold up the stream.
            self._views_at = mono
            self._views_task = asyncio.create_task(self._refresh_views(status))
        return {
            "now": now,
            "node": {
                "node_id": node.settings.node_id,
                "url": node.settings.advertise_url,
                "role": status.get("role", "leader"),
                "is_leader": node.log.is_leader(),
                "mode": status.get("mode"),
            },
            "cluster": {"status": status, "views": self._views, "poll_s": PEER_POLL_S},
            "inflight": live_rows(list(node.store.inflight.values()), now),
            "recent": self._recent,
        }

    async def _read_recent(self, now: float) -> dict[str, Any]:
        try:
            items, _ = await self.node.store.list_page(ListFilter(limit=MAX_RECENT_ROWS), now)
        except Exception as e:  # storage trouble shows on the page; the stream goes on
            return {"rows": self._recent["rows"], "error": f"storage: {type(e).__name__}"}
        return {"rows": [row(t, now) for t in items], "error": None}

    async def _refresh_views(self, status: dict[str, Any]) -> None:
        self._views = await self._fetch_views(status)

    async def _fetch_views(self, status: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Each other member's own status (see `service_token` for the credentials)."""
        http: httpx.AsyncClient | None = self.node.http
        own = status.get("id")
        members = [m for m in status.get("members", [])[:MAX_MEMBERS] if m.get("id") != own]
        if http is None or status.get("mode") != "raft":
            return {}
        token = self._token
        headers = {"Authorization": f"Bearer {token}"} if token else {}

        async def fetch(m: dict[str, Any]) -> tuple[str, dict[str, Any]]:
            at = time.time()
            try:
                r = await http.get(
                    str(m["url"]).rstrip("/") + "/v1/cluster",
                    headers=headers,
                    timeout=PEER_TIMEOUT_S,
                )
                r.raise_for_status()
                return str(m["id"]), {"ok": True, "status": r.json(), "error": None, "at": at}
            except (httpx.HTTPError, ValueError) as e:
                err = f"unreachable: {type(e).__name__}"
                if isinstance(e, httpx.HTTPStatusError):
                    err = f"HTTP {e.response.status_code}"
                return str(m["id"]), {"ok": False, "status": None, "error": err, "at": at}

        return dict(await asyncio.gather(*(fetch(m) for m in members)))

    # -- activity and participants (the leader's) ---------------------------------------------

    def local_metrics(self, since: int | None, source: str | None) -> dict[str, Any]:
        """This node's own series: all of it when the caller's copy is of another series."""
        m = self.node.metrics
        now = m.clock()
        full = since is None or source != self.source
        return {
            "source": self.source,
            "node_id": self.node.settings.node_id,
            "full": full,
            "span_s": SERIES_SPAN_S,
            "points": m.activity.points(now, None if full else since),
            "participants": m.participants_summary(),
            "recent_latency": m.activity.latency_over(now, RECENT_LATENCY_S),
            "totals": {
                "begun": m.begun.value,
                "committed": m.committed.value,
                "aborted": m.aborted.value,
                "phase2_retries": m.phase2_retries.value,
            },
            "error": None,
        }

    async def metrics(self, since: int | None, source: str | None) -> dict[str, Any]:
        """The leader's series: this node's own when it leads (or runs alone), else the
        mirror of the leader's, refreshed at most every `LEADER_METRICS_REFRESH_S`."""
        node = self.node
        if node.log.is_leader() or node.raft is None:
            return self.local_metrics(since, source)
        leader_url = node.log.leader_url()
        mirror = self._mirror
        if leader_url is None:
            mirror.error = "no leader elected: activity is counted by the leader"
        elif node.http is not None:
            async with mirror.lock:
                mono = time.monotonic()
                if mono - mirror.fetched_at >= LEADER_METRICS_REFRESH_S:
                    mirror.fetched_at = mono
                    await mirror.refresh(node.http, leader_url, self._token)
        full = since is None or source != mirror.source
        return {
            "source": mirror.source,
            "node_id": mirror.source.split("/")[0] if mirror.source else None,
            "full": full,
            "span_s": SERIES_SPAN_S,
            "points": slice_points(mirror.points, None if full else since),
            "participants": mirror.participants,
            "recent_latency": mirror.recent_latency,
            "totals": mirror.totals,
            "error": mirror.error,
        }
