"""The operator's dashboard, served by every node at `/dashboard`.

A page written by hand (HTML, CSS and JavaScript in `static/`, no build step, nothing loaded
from elsewhere) fed by a server-sent-event stream of this node's applied state, its view of
the cluster and the leader's recent activity; actions go through the public API v1.

The router is built lazily so that `coordinator.metrics` can import `series` from this
package without importing FastAPI routes (and the API module) in a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

if TYPE_CHECKING:  # the node builds the app: no import at run time
    from coordinator.node import Node


def router(node: Node) -> APIRouter:
    """The `/dashboard` routes for `node` (a `coordinator.node.Node`)."""
    from coordinator.dashboard.routes import build_router

    return build_router(node)
