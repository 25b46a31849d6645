"""Fixtures of the operator-tooling tests."""

from __future__ import annotations

import pytest

from coordinator import migrate


@pytest.fixture
def node_db(db_url: str) -> str:
    """A migrated, empty coordinator node database."""
    migrate.upgrade(db_url, "coordinator")
    return db_url
