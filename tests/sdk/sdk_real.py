"""A real coordinator (one standalone node, in-process) and two demo banks for the SDK's
tests, with the API token and the participant token set to different values."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sdk_servers import ServerThread, free_port

from coordinator import migrate
from coordinator.config import Settings
from coordinator.node import build_app
from tests.test_node import FAST  # the same quick timeouts as the node tests
from txc_demo.bank import create_app

API_TOKEN = "api-secret-0123456789"
PARTICIPANT_TOKEN = "participant-secret"
POLL_TIMEOUT_S = 20.0
POLL_STEP_S = 0.05


def eventually(predicate, within_s: float = POLL_TIMEOUT_S) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(POLL_STEP_S)


@contextlib.contextmanager
def serve_coordinator(pg, raft: bool = False, **overrides: Any) -> Iterator[str]:
    """A real coordinator node on its own database; its URL. Standalone, or with `raft` a
    Raft group of one (its log is the replicated one, entries and all). `overrides` are
    Settings fields (the API and participant tokens above by default)."""
    db = pg.new_database("coord")
    migrate.upgrade(db, "coordinator")
    port = free_port()
    values: dict[str, Any] = {
        "api_token": API_TOKEN,
        "participant_token": PARTICIPANT_TOKEN,
        **FAST,
        **overrides,
    }
    if raft:
        values |= {
            "peers": f"1=http://127.0.0.1:{port}",
            "raft_id": 1,
            "cluster_secret": "cluster-secret-0123456789",
        }
    settings = Settings(database_url=db, port=port, **values)
    server = ServerThread(build_app(settings, run_migrations=False), port).start()
    try:
        if raft:
            eventually(lambda: httpx.get(f"{server.url}/readyz").status_code == 200)
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def coordinator_url(pg) -> Iterator[str]:
    with serve_coordinator(pg) as url:
        yield url


@pytest.fixture
def two_banks(pg, coordinator_url: str) -> Iterator[tuple[str, str]]:
    servers = []
    for name in ("bank-a", "bank-b"):
        port = free_port()
        app = create_app(
            name,
            pg.new_database("bank"),
            coordinator_url,
            f"http://127.0.0.1:{port}",
            token=API_TOKEN,
            participant_token=PARTICIPANT_TOKEN,
        )
        servers.append(ServerThread(app, port).start())
    yield servers[0].url, servers[1].url
    for s in servers:
        s.stop()
