"""What every `txc` subcommand shares for talking to its user: the error that carries an exit
code, and printing a result as a table or as JSON (`--json`). Its own module so that the
operator subcommands (coordinator/ops/cli.py) and the main CLI use one copy without importing
each other."""

from __future__ import annotations

import argparse
import json
from typing import Any


class CliError(Exception):
    """A failure the user is told in one line, with the exit code it maps to."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def table(rows: list[list[Any]], headers: list[str]) -> str:
    widths = [max([len(h), *(len(str(r[i])) for r in rows)]) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def emit(args: argparse.Namespace, data: Any, human: str) -> None:
    """`data` as JSON with `--json`, else the human-readable `human`."""
    print(json.dumps(data, indent=2) if args.json else human)
