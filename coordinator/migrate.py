"""Run the project's Alembic migrations from code (`txc migrate`, `txc up`, the tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations

BRANCHES = ("coordinator", "participant")


def alembic_config(database_url: str) -> Config:
    here = Path(migrations.__file__).parent
    cfg = Config()
    cfg.set_main_option("script_location", str(here))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", str(here / "versions"))
    cfg.cmd_opts = None
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, branch: str = "coordinator") -> None:
    """Bring `database_url` to the head of one branch. Idempotent."""
    if branch not in BRANCHES:
        raise ValueError(f"unknown migration branch {branch!r}; one of {BRANCHES}")
    command.upgrade(alembic_config(database_url), f"{branch}@head")
