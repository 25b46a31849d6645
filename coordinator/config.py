"""Node configuration: defaults, then a TOML file, then `TXC_*` environment variables.

Every timeout and bound the engine uses is named here with its default, so an operator can
read one table to know how the node behaves (README "Configuration" mirrors it).
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration that the node refuses to start with; the message says what to fix."""


@dataclass
class Settings:
    node_id: str = "node1"
    host: str = "127.0.0.1"
    port: int = 7000
    # The URL other nodes and participants use to reach this node (defaults to http://host:port).
    advertise_url: str = ""
    database_url: str = ""
    # "" (unset): without API tokens the node serves loopback only. `development` (said
    # explicitly) lets an open node listen on any address; `production` refuses to start
    # without an admin token and a participant registry.
    environment: str = ""
    api_token: str = field(default="", repr=False)  # one admin token
    api_tokens: str = field(
        default="", repr=False
    )  # "role=token,..." (client/participant/read/admin)
    # Participant identities (coordinator/participants.py): a TOML file naming each
    # participant, its secrets and its URLs. `participant_token` is the earlier model, one
    # secret shared by every participant (any of them can act as any other).
    participants_file: str = ""
    # Refuse a participants_file that others may read. false only where the file is a
    # mounted secret the platform keeps private (Docker and Kubernetes mount them 0644).
    participants_file_private: bool = True
    participant_token: str = field(default="", repr=False)

    # Raft group: `peers` lists every initial member as "id=url,id=url"; empty runs one
    # standalone node without Raft. `raft_id` is this node's id in that list.
    peers: str = ""
    raft_id: int = 0
    join: bool = False  # a new node joining a running group (added by `txc cluster add-node`)
    cluster_secret: str = field(default="", repr=False)
    # TLS: serve HTTPS with this certificate and key; verify peers and https participants
    # against this CA bundle (default: the system's).
    tls_certfile: str = ""
    tls_keyfile: str = ""
    tls_ca_file: str = ""
    raft_tick_s: float = 0.05  # one Raft tick; election timeout = election_ticks..2x ticks
    election_ticks: int = 10
    heartbeat_ticks: int = 2  # a heartbeat every 100 ms: 5 per shortest election timeout
    # Log entries kept before a snapshot compacts them; the shell also waits for at least as
    # many as the last snapshot's records (replicated_log.RaftLog.snapshot_due).
    snapshot_entries: int = 20_000
    # A Raft node writes its applied state to its database at least this often
    # (coordinator/checkpoint.py); a restart re-applies at most this much of its log.
    checkpoint_interval_s: float = 1.0
    forward_timeout_s: float = 30.0  # a follower's forwarded request to the leader

    otel: str = ""  # OpenTelemetry: "", "console", "otlp" or "global" (coordinator.tracing)
    default_timeout_s: float = 60.0  # a transaction's lifetime when begin gives none
    prepare_timeout_s: float = 10.0  # one prepare request, bounded also by the expiry
    phase2_request_timeout_s: float = 10.0  # one commit/abort request to a participant
    phase2_backoff_initial_s: float = 0.1
    phase2_backoff_max_s: float = 30.0  # retries never stop; they slow down to this
    phase2_inline_wait_s: float = 2.0  # how long commit waits for phase 2 before answering
    sweep_interval_s: float = 0.5  # how often expired transactions are looked for
    max_inflight_phase2: int = 256  # phase-2 drivers running at once
    # Phase-2 batching (coordinator/phase2_batch.py): up to this many commit/abort messages
    # in one request to a participant (1: one request per message), sent once this many
    # requests are already out to it. One request at a time makes the batches bigger (4.4
    # messages per request against 2.6 with two, at 32 clients) and cost ~7% less CPU per
    # transfer end to end (A-B-B-A, README "Performance"); an idle participant still gets each
    # message at once.
    phase2_batch_max: int = 64
    phase2_batch_inflight: int = 1
    # Raft groups: phase 2's results (acknowledgements, failed attempts) made in one turn of
    # the event loop share one log entry (coordinator/proposal_batch.py).
    phase2_coalesce_results: bool = True
    max_body_bytes: int = 64 * 1024
    body_read_timeout_s: float = 30.0  # a request's body must have arrived by then (else 408)
    header_timeout_s: float = 10.0  # a request's headers must have arrived by then (else 408)
    log_batch_max: int = 512  # commands written in one log transaction (group commit)
    log_queue_max: int = 10_000  # proposals waiting for the log before 503
    participant_connections: int = 200  # HTTP connections to participants, all together
    list_page_max: int = 500
    # Retention (coordinator/retention.py, docs/retention.md). A finished transaction's record
    # leaves the replicated state this long after it finished; its decision stays as a
    # tombstone for `tombstone_retention_s` more (what `/outcome`, a repeated commit, a
    # late enlistment and an idempotency key are answered with); its full record stays in
    # each node's history table for `history_retention_days`.
    retention_s: float = 600.0
    tombstone_retention_s: float = 3_600.0
    history_retention_days: float = 7.0

    def __post_init__(self) -> None:
        if not self.advertise_url:
            scheme = "https" if self.tls_certfile else "http"
            self.advertise_url = f"{scheme}://{self.host}:{self.port}"
        if self.peers and self.node_id == "node1" and self.raft_id:
            self.node_id = f"node{self.raft_id}"

    def client_ssl(self) -> ssl.SSLContext:
        """How this node verifies the servers it calls (peers, participants, the leader)."""
        return ssl.create_default_context(cafile=self.tls_ca_file or None)

    def peer_urls(self) -> dict[int, str]:
        """Parse `peers` ("1=http://a:7000,2=http://b:7000")."""
        out: dict[int, str] = {}
        for item in filter(None, (p.strip() for p in self.peers.split(","))):
            key, sep, url = item.partition("=")
            if not sep or not key.strip().isdigit() or not url.startswith(("http://", "https://")):
                raise ConfigError(f"peers: expected id=http(s)://host:port, got {item!r}")
            out[int(key)] = url.strip().rstrip("/")
        return out

    def validate(self) -> Settings:
        if not self.database_url:
            raise ConfigError("database_url is not set (TXC_DATABASE_URL)")
        if self.environment not in ("", "development", "production"):
            raise ConfigError("environment must be 'development' or 'production' (or unset)")
        from coordinator.auth import Role, TokenConfigError, parse_tokens

        try:
            roles = set(parse_tokens(self.api_tokens, self.api_token).values())
        except TokenConfigError as e:
            raise ConfigError(str(e)) from None
        if self.environment == "production":
            missing = []
            if Role.ADMIN not in roles:
                missing.append("an admin token (TXC_API_TOKEN or TXC_API_TOKENS=admin=...)")
            if not self.participants_file:
                # A shared participant_token is not enough: any participant holding it can
                # sign commits, aborts and "yes" votes for every other (docs/security.md).
                missing.append("TXC_PARTICIPANTS_FILE (each participant's own secret and URLs)")
            if missing:
                raise ConfigError(
                    "production configuration without credentials: set " + "; ".join(missing)
                )
        if self.participants_file and self.participant_token:
            raise ConfigError(
                "participants_file replaces the shared participant_token: unset "
                "TXC_PARTICIPANT_TOKEN (each participant signs with its own secret)"
            )
        if self.participants_file:
            from coordinator.participants import RegistryError, load

            try:
                load(self.participants_file, private=self.participants_file_private)
            except RegistryError as e:
                raise ConfigError(str(e)) from None
        if not roles and not is_loopback(self.host) and self.environment != "development":
            raise ConfigError(
                f"no API tokens, so the API is open: txc serves it on loopback only, not on "
                f"{self.host!r}. Set TXC_API_TOKENS (and TXC_PARTICIPANTS_FILE), or "
                "TXC_ENVIRONMENT=development to serve an open API beyond this machine"
            )

        if bool(self.tls_certfile) != bool(self.tls_keyfile):
            raise ConfigError("tls_certfile and tls_keyfile go together")
        for name in ("tls_certfile", "tls_keyfile", "tls_ca_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError(f"{name}: no such file {path}")

        if self.peers:
            urls = self.peer_urls()
            if self.raft_id not in urls:
                raise ConfigError(f"raft_id {self.raft_id} is not in peers ({self.peers})")
            if not self.cluster_secret:
                raise ConfigError("a Raft group needs a cluster secret (TXC_CLUSTER_SECRET)")
            if not 0 < self.heartbeat_ticks < self.election_ticks:
                raise ConfigError("need 0 < heartbeat_ticks < election_ticks")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_s") and v <= 0:
                raise ConfigError(f"{f.name} must be > 0")
        from coordinator.participant_client import MAX_BATCH_MESSAGES

        if not 1 <= self.phase2_batch_max <= MAX_BATCH_MESSAGES:
            raise ConfigError(f"phase2_batch_max must be between 1 and {MAX_BATCH_MESSAGES}")
        if self.phase2_batch_inflight < 1:
            raise ConfigError("phase2_batch_inflight must be >= 1")
        if self.history_retention_days <= 0:
            raise ConfigError("history_retention_days must be > 0")
        from coordinator.retention import MIN_TOMBSTONE_RETENTION_S

        if self.tombstone_retention_s < MIN_TOMBSTONE_RETENTION_S:
            raise ConfigError(
                f"tombstone_retention_s must be at least {MIN_TOMBSTONE_RETENTION_S:g} "
                "(a client's retried commit must still find the decision)"
            )
        return self


def is_loopback(host: str) -> bool:
    """Whether a listening address is reachable from this machine only."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _coerce(name: str, value: Any, typ: Any) -> Any:
    kind = (
        typ
        if isinstance(typ, type)
        else {"int": int, "float": float, "str": str, "bool": bool}.get(typ, str)
    )
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}") from e


def load(
    path: str | Path | None = None, env: dict[str, str] | None = None, **overrides: Any
) -> Settings:
    """Build the settings: defaults < file < environment < explicit overrides."""
    env = dict(os.environ) if env is None else env
    values: dict[str, Any] = {}
    known = {f.name: f.type for f in fields(Settings)}
    path = path or env.get("TXC_CONFIG")
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from e
        for k, v in data.items():
            if k not in known:
                raise ConfigError(f"unknown setting {k!r} in {path}")
            values[k] = _coerce(k, v, known[k])
    for name, typ in known.items():
        env_name = f"TXC_{name.upper()}"
        if env_name in env:
            values[name] = _coerce(env_name, env[env_name], typ)
    for k, v in overrides.items():
        if v is not None:
            values[k] = v
    return Settings(**values)
