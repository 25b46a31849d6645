"""Structured logs: one JSON object per line, carrying the transaction id and the W3C trace
context of the request being served, so an operator can follow one transaction across
nodes and participants with `grep` or a log pipeline.

The transaction id and `traceparent` live in context variables: the API sets them per
request, and asyncio tasks started while serving it (2PC, phase 2) inherit them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any

txid_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("txid", default=None)
traceparent_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "traceparent", default=None
)

# version-traceid-parentid-flags, lowercase hex (W3C Trace Context).
TRACEPARENT_RE = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
TXID_PATH_RE = re.compile(r"^/v1/transactions/([^/]+)")
MAX_MESSAGE = 4000  # characters of one log message


def valid_traceparent(value: str | None) -> str | None:
    if value and TRACEPARENT_RE.match(value.strip().lower()):
        return value.strip().lower()
    return None


def txid_from_path(path: str) -> str | None:
    m = TXID_PATH_RE.match(path)
    return m.group(1) if m else None


class JsonFormatter(logging.Formatter):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": self.node_id,
            "msg": record.getMessage()[:MAX_MESSAGE],
        }
        txid = txid_var.get()
        if txid:
            out["txid"] = txid
        tp = traceparent_var.get()
        if tp:
            out["traceparent"] = tp
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)[-MAX_MESSAGE:]
        return json.dumps(out, separators=(",", ":"))


def configure(node_id: str, level: str = "INFO", fmt: str = "json") -> None:
    """Log to stderr, as JSON (default) or as text (`fmt="text"`, easier on a terminal)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    else:
        handler.setFormatter(JsonFormatter(node_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
