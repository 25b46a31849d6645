"""A SQLAlchemy engine for a MariaDB/MySQL participant, with one PyMySQL trap avoided.

Why: a MariaDB/MySQL participant opens a new connection for every joined request (a session
whose XA branch is prepared must end for the branch to be detached; `mysql_resource.py`), and
PyMySQL >= 1.2, given no TLS option, builds a fresh default TLS context for each connection
(loading the system's CA certificates: ~20 ms of CPU each, measured; 95% of a request's
client CPU). On a loopback address, where TLS protects nothing, `create_engine` turns TLS off
unless the URL or `connect_args` say something about it; elsewhere pass
`connect_args={"ssl": context}` with one `ssl.SSLContext` you built once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.engine import make_url

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_TLS_KEYS = ("ssl", "ssl_ca", "ssl_cert", "ssl_key", "ssl_disabled", "ssl_verify_cert")


def normalise_url(url: str) -> str:
    """`mysql://` and `mariadb://` (no driver named) mean PyMySQL, the SDK's dependency."""
    for scheme in ("mysql://", "mariadb://"):
        if url.startswith(scheme):
            return scheme[:-3] + "+pymysql://" + url[len(scheme) :]
    return url


def is_mysql_url(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0] in ("mysql", "mariadb")


def create_engine(url: str, **kwargs: Any) -> Engine:
    """`sqlalchemy.create_engine` for a MariaDB/MySQL URL (see the module doc)."""
    parsed = make_url(normalise_url(url))
    connect_args = dict(kwargs.pop("connect_args", {}))
    if (
        parsed.get_driver_name() == "pymysql"
        and (parsed.host or "localhost") in LOOPBACK_HOSTS
        and not any(k in connect_args or k in parsed.query for k in _TLS_KEYS)
    ):
        connect_args["ssl_disabled"] = True
    return sa_create_engine(parsed, connect_args=connect_args, **kwargs)
