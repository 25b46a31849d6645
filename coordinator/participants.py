"""The participant registry: each participant's name, the secrets it signs with, and the URLs
it may be enlisted at (docs/security.md).

Why a registry: with one secret shared by every participant, any participant (or whoever
read that secret off one of them) can sign commits, aborts and "yes" enlistments for any
other, and any holder of a participant token can enlist any URL, making the coordinator send
signed requests wherever it is told. With the registry, a participant's secret speaks for
that participant only, and only at the URLs registered for it.

The registry is a TOML file (`participants_file`), the same on every node:

    [participants.bank-a]
    secrets = ["<at least 16 characters>"]    # the first signs; any one verifies (rotation)
    urls = ["http://10.0.0.5:8101/txc"]      # protocol base URLs it may enlist with

| mode | when | who may enlist name N at URL U | requests to N signed with |
|---|---|---|---|
| `registry` | `participants_file` set | N itself, U under one of N's URLs | N's first secret |
| `shared` | only `participant_token` (earlier model) | any participant | the shared secret |
| `open` | neither (development, loopback) | anyone | nothing |
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from participant_sdk.headers import validate_base_url, validate_participant_name
from participant_sdk.signing import MAX_SECRETS

MIN_SECRET_CHARS = 16
MAX_PARTICIPANTS = 10_000  # a registry bigger than this is a mistake, not a deployment
MAX_URLS = 16  # per participant
MAX_REGISTRY_BYTES = 4 * 1024 * 1024


class RegistryError(ValueError):
    """The registry file cannot be used (the message names the entry and the problem)."""


class Mode(StrEnum):
    REGISTRY = "registry"
    SHARED = "shared"
    OPEN = "open"


@dataclass(frozen=True)
class Identity:
    name: str
    secrets: tuple[str, ...]
    urls: tuple[str, ...]

    def __post_init__(self) -> None:
        assert 1 <= len(self.secrets) <= MAX_SECRETS
        assert 1 <= len(self.urls) <= MAX_URLS

    def url_allowed(self, url: str) -> bool:
        """`url` is one of this participant's URLs or a path below one. A URL with a query,
        a fragment, user info or a `..` segment is never allowed: each could make the same
        prefix reach somewhere else."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return False
        if parts.query or parts.fragment or "@" in parts.netloc or "\\" in url:
            return False
        if any(seg in ("..", ".") for seg in parts.path.split("/")):
            return False
        url = url.rstrip("/")
        return any(url == u or url.startswith(u + "/") for u in self.urls)


class Refusal(StrEnum):
    """Why an enlistment of a name at a URL is refused (the API's error codes)."""

    UNKNOWN = "unknown_participant"
    URL = "url_not_registered"


class Registry:
    def __init__(self, identities: dict[str, Identity] | None = None, shared_secret: str = ""):
        self.identities = dict(identities or {})
        self.shared_secret = shared_secret
        assert len(self.identities) <= MAX_PARTICIPANTS

    def replace(self, identities: dict[str, Identity]) -> None:
        """A reloaded registry file (coordinator/registry_watch.py). One assignment: a
        request sees the old identities or the new ones, never a mix. The mode never
        changes this way (a registry stays a registry)."""
        assert self.mode is Mode.REGISTRY and identities, "only a registry is reloaded"
        assert len(identities) <= MAX_PARTICIPANTS
        self.identities = dict(identities)

    def fingerprint(self) -> str:
        """A short digest of names, URLs and secrets: equal on two nodes when they hold the
        same registry (what an operator compares after editing the file everywhere). Secrets
        enter only hashed, and the digest is one-way."""
        h = hashlib.sha256()
        for name in sorted(self.identities):
            ident = self.identities[name]
            h.update(
                json.dumps([name, list(ident.urls), [_digest(x) for x in ident.secrets]]).encode()
            )
        if self.shared_secret:
            h.update(b"shared:" + _digest(self.shared_secret).encode())
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, object]:
        """What an operator may see: names, URLs, how many secrets; never a secret."""
        return {
            "mode": str(self.mode),
            "fingerprint": self.fingerprint(),
            "participants": [
                {"name": i.name, "urls": list(i.urls), "secrets": len(i.secrets)}
                for i in sorted(self.identities.values(), key=lambda i: i.name)
            ],
        }

    @property
    def mode(self) -> Mode:
        if self.identities:
            return Mode.REGISTRY
        return Mode.SHARED if self.shared_secret else Mode.OPEN

    @property
    def secrets_known(self) -> bool:
        """Whether any participant signature can be checked here."""
        return bool(self.identities or self.shared_secret)

    def secrets(self, name: str) -> tuple[str, ...] | None:
        """The secrets valid for `name`, or None (unknown in registry mode; open mode)."""
        if self.identities:
            ident = self.identities.get(name)
            return ident.secrets if ident is not None else None
        return (self.shared_secret,) if self.shared_secret else None

    def signing_secret(self, name: str) -> str | None:
        s = self.secrets(name)
        return s[0] if s else None

    @property
    def answers_signed(self) -> bool:
        """Whether a participant's answers must carry its signature. Only with a registry:
        an SDK of an earlier release (the `shared` model) does not sign its answers, and a
        registry is configured after every participant runs one that does."""
        return self.mode is Mode.REGISTRY

    def refusal(self, name: str, url: str) -> Refusal | None:
        """Why `name` may not be enlisted at `url`, or None."""
        if not self.identities:
            return None
        ident = self.identities.get(name)
        if ident is None:
            return Refusal.UNKNOWN
        return None if ident.url_allowed(url) else Refusal.URL


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def load(path: str, *, private: bool = True) -> dict[str, Identity]:
    """The identities in a registry file; RegistryError for anything that is not exactly
    the documented shape (a typo must not silently leave a participant unregistered), or,
    with `private`, for a file others may read."""
    try:
        st = os.stat(path)
        if st.st_size > MAX_REGISTRY_BYTES:
            raise RegistryError(f"{path}: over {MAX_REGISTRY_BYTES} bytes")
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise RegistryError(f"participants_file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise RegistryError(f"participants_file {path}: not TOML: {e}") from None
    if private and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise RegistryError(
            f"participants_file {path} holds secrets and is readable by others "
            f"(mode {stat.S_IMODE(st.st_mode):o}): chmod 600 it"
        )
    return parse(data, path)


def parse(data: dict[str, object], where: str = "registry") -> dict[str, Identity]:
    extra = set(data) - {"participants"}
    if extra:
        raise RegistryError(f"{where}: unknown top-level keys {sorted(extra)}")
    table = data.get("participants")
    if not isinstance(table, dict) or not table:
        raise RegistryError(f"{where}: expected at least one [participants.<name>] table")
    if len(table) > MAX_PARTICIPANTS:
        raise RegistryError(f"{where}: more than {MAX_PARTICIPANTS} participants")
    out: dict[str, Identity] = {}
    for name, entry in table.items():
        out[name] = _identity(name, entry, where)
    return out


def _identity(name: str, entry: object, where: str) -> Identity:
    try:
        validate_participant_name(name)
    except ValueError as e:
        raise RegistryError(f"{where}: {e}") from None
    here = f"{where}: participants.{name}"
    if not isinstance(entry, dict):
        raise RegistryError(f"{here}: expected a table with secrets and urls")
    extra = set(entry) - {"secrets", "urls"}
    if extra:
        raise RegistryError(f"{here}: unknown keys {sorted(extra)}")
    secrets = entry.get("secrets")
    urls = entry.get("urls")
    if (
        not isinstance(secrets, list)
        or not 1 <= len(secrets) <= MAX_SECRETS
        or not all(isinstance(s, str) for s in secrets)
    ):
        raise RegistryError(f"{here}: secrets must be a list of 1 to {MAX_SECRETS} strings")
    if any(len(s) < MIN_SECRET_CHARS for s in secrets):
        raise RegistryError(f"{here}: each secret needs at least {MIN_SECRET_CHARS} characters")
    if len(set(secrets)) != len(secrets):
        raise RegistryError(f"{here}: the same secret twice")
    if (
        not isinstance(urls, list)
        or not 1 <= len(urls) <= MAX_URLS
        or not all(isinstance(u, str) for u in urls)
    ):
        raise RegistryError(f"{here}: urls must be a list of 1 to {MAX_URLS} strings")
    clean = []
    for u in urls:
        try:
            v = validate_base_url(u)
        except ValueError as e:
            raise RegistryError(f"{here}: {e}") from None
        parts = urlsplit(v)
        if parts.query or parts.fragment or "@" in parts.netloc:
            raise RegistryError(f"{here}: {u!r} must have no query, fragment or user info")
        clean.append(v)
    return Identity(name, tuple(secrets), tuple(clean))


def from_settings(participants_file: str, shared_secret: str, *, private: bool = True) -> Registry:
    identities = load(participants_file, private=private) if participants_file else {}
    return Registry(identities, shared_secret)
