#!/usr/bin/env python3
"""Container entrypoint: read secrets from files, then run the command.

For every environment variable `NAME_FILE` where NAME is a `TXC_*` variable or `PGPASSWORD`,
set NAME to the content of that file (one trailing newline removed) and drop `NAME_FILE`;
then replace this process with the command (`txc serve`, `python -m txc_demo.bank ...`).
This is how Docker Compose `secrets:` (files under /run/secrets/) reach the coordinator, the
demo banks (whose `--token`/`--participant-token` default to `$TXC_API_TOKEN` and
`$TXC_PARTICIPANT_TOKEN`) and libpq (`PGPASSWORD` for a database URL without a password),
without putting a secret in the compose file or in `docker inspect`. A setting whose own
name ends in `_FILE` (`TXC_TLS_CA_FILE`) is a path the node reads itself, and is left alone.

Installed in the image as /usr/local/bin/txc-entrypoint. Exit code 2 (as for a configuration
error) when a file cannot be read or a variable is given both ways.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import fields
from pathlib import Path

SUFFIX = "_FILE"
EXIT_USAGE = 2


class EntrypointError(Exception):
    pass


def _read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def setting_variables() -> frozenset[str]:
    """The `TXC_*` variables that name a coordinator setting (in the image: always found)."""
    try:
        from coordinator.config import Settings
    except ImportError:
        return frozenset()
    return frozenset(f"TXC_{f.name.upper()}" for f in fields(Settings))


def applies_to(name: str) -> bool:
    """Whether `name` (without `_FILE`) may be read from a file."""
    return (name.startswith("TXC_") and len(name) > len("TXC_")) or name == "PGPASSWORD"


def resolve(
    env: Mapping[str, str],
    read: Callable[[str], str] = _read,
    settings: Collection[str] | None = None,
) -> dict[str, str]:
    """The environment with every `NAME_FILE` replaced by `NAME` = the file's content.
    `settings`: variables that are settings in their own right, never secret files
    (default: the coordinator's settings)."""
    keep = setting_variables() if settings is None else settings
    out = dict(env)
    for key, path in env.items():
        name = key.removesuffix(SUFFIX)
        if name == key or key in keep or not applies_to(name):
            continue
        if name in env:
            raise EntrypointError(f"both {name} and {key} are set; keep one")
        try:
            value = read(path)
        except OSError as e:
            raise EntrypointError(f"{key}: cannot read {path}: {e.strerror or e}") from None
        value = value.removesuffix("\n").removesuffix("\r")
        if not value:
            raise EntrypointError(f"{key}: {path} is empty")
        out[name] = value
        del out[key]
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: txc-entrypoint COMMAND [ARG...]", file=sys.stderr)
        return EXIT_USAGE
    try:
        env = resolve(os.environ)
    except EntrypointError as e:
        print(f"txc-entrypoint: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        print(f"txc-entrypoint: cannot run {argv[0]}: {e.strerror or e}", file=sys.stderr)
        return 127
    return 0  # not reached: exec replaced the process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
