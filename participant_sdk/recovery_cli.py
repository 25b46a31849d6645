"""`python -m participant_sdk.recovery`: resolve a participant's in-doubt transactions once,
by hand (an operator after an outage, a script), and print the report as JSON.

Its own module so that the recovery core (participant_sdk/recovery.py), which every
resource manager imports, does not import the resource managers back.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError

from participant_sdk import mysql_engine
from participant_sdk.mysql_resource import MySqlResourceManager
from participant_sdk.participant import ParticipantBase
from participant_sdk.pg_resource import PgResourceManager


def _psycopg_url(url: str) -> str:
    """The PostgreSQL participant runs on psycopg 3: accept plain postgres(ql):// URLs too."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def main(argv: list[str] | None = None) -> int:
    """`python -m participant_sdk.recovery`: resolve a PostgreSQL or MariaDB/MySQL
    participant's in-doubt transactions once and print the report as JSON."""

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--name", required=True, help="participant name")
    ap.add_argument("--database-url", required=True, help="SQLAlchemy URL of its database")
    ap.add_argument("--coordinator-url", required=True)
    ap.add_argument("--token", default=None, help="an API bearer token (participant role)")
    ap.add_argument(
        "--participant-token",
        default=os.environ.get("TXC_PARTICIPANT_TOKEN"),
        help="the participant's secret (or $TXC_PARTICIPANT_TOKEN): its outcome inquiries are "
        "signed, and only answers the coordinator signed are applied",
    )
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    options = {
        "public_url": "http://unused.invalid",
        "coordinator_url": args.coordinator_url,
        "token": args.token,
        "participant_token": args.participant_token or None,
    }
    rm: ParticipantBase
    if mysql_engine.is_mysql_url(args.database_url):
        engine = mysql_engine.create_engine(args.database_url)
        rm = MySqlResourceManager(args.name, engine, **options)
    else:
        engine = create_engine(_psycopg_url(args.database_url))
        rm = PgResourceManager(args.name, engine, **options)
    try:
        report = rm.resolve_in_doubt(dry_run=args.dry_run)
    except DBAPIError as e:
        print(f"cannot read the participant database: {e.orig}", file=sys.stderr)
        return 5
    finally:
        rm.close()
        engine.dispose()
    json.dump(report.to_dict(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 1 if any(i.action == "error" for i in report.items) else 0
