"""API tokens and roles.

| role | may |
|---|---|
| `client` | begin, commit, abort; read |
| `participant` | enlist, ask an outcome |
| `read` | read transactions and the cluster (the dashboard's view) |
| `admin` | everything, including operator actions and membership changes |

Tokens come from `api_tokens` ("role=token,role=token", several per role allowed) and
`api_token` (one admin token). With no token configured the API is open (development, and
then the node listens on loopback only: coordinator/config.py); `environment=production`
refuses to start that way. Who did what is recorded by token fingerprint (a hash prefix),
never by the token itself.

A participant of the registry (coordinator/participants.py) proves who it is by signing
its call (`Txc-Participant`, `Txc-Timestamp`, `Txc-Signature`) rather than by a bearer
token: its principal has the participant role and its name, and it may enlist that name
only.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from coordinator.participants import Registry
from participant_sdk.headers import MAX_PARTICIPANT_NAME
from participant_sdk.signing import (
    PARTICIPANT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    verify_participant,
)


class Role(StrEnum):
    ADMIN = "admin"
    CLIENT = "client"
    PARTICIPANT = "participant"
    READ = "read"


class TokenConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Principal:
    """Who is calling: a role and a fingerprint that names the token without revealing it."""

    role: Role
    fingerprint: str
    participant: str | None = None  # a registry participant that signed its call

    @property
    def name(self) -> str:
        if self.participant is not None:
            return f"participant:{self.participant}"
        return f"{self.role.value}:{self.fingerprint}"


ANONYMOUS = Principal(Role.ADMIN, "open")  # the API without tokens (development only)
FINGERPRINT_CHARS = 12
MIN_TOKEN_CHARS = 16


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:FINGERPRINT_CHARS]


def parse_tokens(api_tokens: str, admin_token: str = "") -> dict[str, Role]:
    """token -> role. Refuses unknown roles and short tokens (easy to guess)."""
    out: dict[str, Role] = {}
    items = [i.strip() for i in api_tokens.split(",") if i.strip()]
    if admin_token:
        items.append(f"admin={admin_token}")
    for item in items:
        role, sep, token = item.partition("=")
        if not sep or not token:
            raise TokenConfigError("api_tokens: expected role=token[,role=token...]")
        try:
            r = Role(role.strip())
        except ValueError:
            roles = ", ".join(x.value for x in Role)
            raise TokenConfigError(f"api_tokens: unknown role {role!r} (one of {roles})") from None
        if len(token) < MIN_TOKEN_CHARS:
            raise TokenConfigError(f"api_tokens: tokens need at least {MIN_TOKEN_CHARS} characters")
        out[token] = r
    return out


class AuthFailed(Exception):
    """401: no bearer token, or one that is not configured."""


class TokenTable:
    def __init__(self, tokens: dict[str, Role]) -> None:
        self._tokens = [(t.encode(), r, fingerprint(t)) for t, r in tokens.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def principal(self, authorization: str | None) -> Principal:
        """Who sends this `Authorization` header. Open (ANONYMOUS admin) when no token is
        configured; raises AuthFailed for a missing or unknown bearer token."""
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthFailed("missing bearer token")
        p = self.lookup(token.strip())
        if p is None:
            raise AuthFailed("unknown token")
        return p

    def lookup(self, token: str) -> Principal | None:
        """Constant-time in the token's content: every configured token is compared."""
        given = token.encode()
        found: Principal | None = None
        for t, role, fp in self._tokens:
            if hmac.compare_digest(given, t):
                found = Principal(role, fp)
        return found


class Authenticator:
    """Who is calling, from a bearer token or a participant's signature."""

    def __init__(self, tokens: TokenTable, registry: Registry) -> None:
        self.tokens = tokens
        self.registry = registry

    def principal(
        self, headers: Mapping[str, str], method: str, path: str, body: bytes
    ) -> Principal:
        """`headers` with lower-case names. A call carrying `Txc-Participant` is judged by
        its signature alone (a bearer token beside it changes nothing); AuthFailed when the
        signature does not hold, or when the call carries neither and tokens are on."""
        name = headers.get(PARTICIPANT_HEADER.lower())
        if name is None or not self.registry.secrets_known:
            return self.tokens.principal(headers.get("authorization"))
        if not name or len(name) > MAX_PARTICIPANT_NAME:
            raise AuthFailed("malformed participant name")
        secrets = self.registry.secrets(name)
        if secrets is None:
            raise AuthFailed("unknown participant")
        try:
            verify_participant(
                secrets,
                name,
                method,
                path,
                headers.get(TIMESTAMP_HEADER.lower()),
                headers.get(SIGNATURE_HEADER.lower()),
                body,
            )
        except SignatureError as e:
            raise AuthFailed(f"participant signature refused: {e}") from None
        return Principal(Role.PARTICIPANT, name, participant=name)
