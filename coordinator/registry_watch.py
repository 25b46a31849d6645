"""The participant registry file, reloaded while the node runs.

Adding a participant or rotating a secret (docs/security.md) must not need a restart of
every node: a restart of the whole group is an outage window, and the operator would do it
on a hostile network's schedule rather than their own. Each node looks at its
`participants_file` every `REGISTRY_POLL_S` and, when the file changed, loads it the way it
did at start: the same checks (shape, secret lengths, mode 600). What the node then uses is
all of the new file or none of it:

| the new file | what the node does |
|---|---|
| valid | uses it from the next request on; logs the changes and the new fingerprint |
| not valid (syntax, shape, mode) | keeps the registry it had; logs the error once |
| drops a participant still enlisted in an unfinished transaction (1) | keeps the one it had |

(1) phase 2 signs the requests to that participant and checks its answers; the node tries
the file again at every look and uses it once those transactions are finished.

Each node reads its own copy of the file: the registry is the operator's configuration,
like the API tokens, not replicated state. `GET /v1/cluster/participants` on each node gives
its fingerprint, so an operator sees when every node has the same one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from coordinator.participants import Identity, Registry, RegistryError, load
from coordinator.periodic import Periodic

REGISTRY_POLL_S = 2.0  # how soon an edited registry file is in use on this node

log = logging.getLogger("txc.registry")


def _version(path: str) -> tuple[int, ...] | None:
    """What changes when the file does (an editor's rename gives a new inode)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


class RegistryWatch(Periodic):
    name = "txc-registry-watch"

    def __init__(
        self,
        path: str,
        registry: Registry,
        in_use: Callable[[], set[str]],
        interval_s: float = REGISTRY_POLL_S,
        *,
        private: bool = True,
    ) -> None:
        super().__init__(interval_s)
        self.path = path
        self.private = private
        self.registry = registry
        self.in_use = in_use
        self.version = _version(path)  # the one loaded at start
        self.loaded_at = time.time()
        self.reloads = 0
        self.error: str | None = None  # why the current file is not the one in use

    async def run_once(self) -> None:
        self.check()

    def check(self) -> bool:
        """Reload if the file changed; whether the registry in use changed."""
        version = _version(self.path)
        if version == self.version and self.error is None:
            return False
        try:
            identities = load(self.path, private=self.private)
        except RegistryError as e:
            self._refuse(version, str(e))
            return False
        removed = set(self.registry.identities) - set(identities)
        busy = sorted(removed & self.in_use())
        if busy:
            self._refuse(
                version,
                f"{self.path}: removes {', '.join(busy)}, enlisted in unfinished transactions; "
                "kept the registry in use until they finish",
            )
            return False
        before = self.registry.identities
        self.registry.replace(identities)
        self.version, self.error = version, None
        self.loaded_at = time.time()
        self.reloads += 1
        log.info(
            "participant registry reloaded from %s: %s (fingerprint %s)",
            self.path,
            _changes(before, identities),
            self.registry.fingerprint(),
        )
        return True

    def _refuse(self, version: tuple[int, ...] | None, error: str) -> None:
        if (version, error) != (self.version, self.error):
            log.error("participant registry not reloaded: %s", error)
        self.version, self.error = version, error

    def describe(self) -> dict[str, object]:
        return {
            "file": self.path,
            "loaded_at": self.loaded_at,
            "reloads": self.reloads,
            "error": self.error,
        }


def _changes(before: dict[str, Identity], after: dict[str, Identity]) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(n for n in set(before) & set(after) if before[n] != after[n])
    parts = [
        f"{label} {', '.join(names)}"
        for label, names in (("added", added), ("removed", removed), ("changed", changed))
        if names
    ]
    return "; ".join(parts) or "no change"
