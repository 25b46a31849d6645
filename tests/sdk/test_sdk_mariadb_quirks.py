"""The MariaDB XA behaviours that participant_sdk/README.md's quirks table states and
mysql_resource.py relies on, pinned against the real server (a new MariaDB release that
changes one of them fails here, not in production)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pymysql
import pytest
from sqlalchemy.engine import make_url

from participant_sdk.mysql_xid import MAX_MYSQL_TXID, make_xid
from tests.sdk import mariadb_fixture as mdb

mariadb = mdb.mariadb

ER_PARSE_ERROR = 1064
ER_LOCK_WAIT_TIMEOUT = 1205
ER_XAER_NOTA = 1397
ER_XAER_INVAL = 1398
ER_XAER_RMFAIL = 1399
ER_XAER_DUPID = 1440
LOCK_WAIT_S = 1  # innodb_lock_wait_timeout for the probing session (whole seconds)
DETACH_TRIES, DETACH_WAIT_S = 200, 0.01  # waiting for the server to detach a branch


class Sessions:
    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.open: list[pymysql.Connection] = []

    def new(self) -> pymysql.Connection:
        u = self.url
        conn = pymysql.connect(
            host=u.host,
            port=u.port,
            user=u.username,
            database=u.database,
            autocommit=True,
            ssl_disabled=True,
        )
        self.open.append(conn)
        return conn


def run(conn: pymysql.Connection, sql: str) -> tuple:
    with conn.cursor() as cur:
        cur.execute(sql)
        return tuple(cur.fetchall())


def error_of(conn: pymysql.Connection, sql: str) -> int:
    with pytest.raises(pymysql.MySQLError) as e:
        run(conn, sql)
    return int(e.value.args[0])


@pytest.fixture
def sessions(mariadb: mdb.MariaServer) -> Iterator[Sessions]:
    s = Sessions(mariadb.new_database("quirks"))
    run(s.new(), "CREATE TABLE t (k INT PRIMARY KEY, v INT) ENGINE=InnoDB")
    yield s
    for conn in s.open:
        conn.close()
    cleanup = s.new()
    for row in run(cleanup, "XA RECOVER FORMAT='SQL'"):
        if str(row[3]).startswith("'q"):
            run(cleanup, f"XA ROLLBACK {row[3]}")
    cleanup.close()


def prepare(conn: pymysql.Connection, xid: str, sql: str) -> None:
    run(conn, f"XA START {xid}")
    run(conn, sql)
    run(conn, f"XA END {xid}")
    run(conn, f"XA PREPARE {xid}")


def test_a_prepared_session_and_an_attached_branch(sessions: Sessions) -> None:
    a, b = sessions.new(), sessions.new()
    prepare(a, "'q1'", "INSERT INTO t VALUES (1, 1)")
    # The preparing session can still run SELECT 1 and user-lock functions, nothing else.
    assert run(a, "SELECT 1") == ((1,),)
    assert run(a, "SELECT RELEASE_LOCK('nothing')") == ((None,),)
    assert error_of(a, "SELECT * FROM t") == ER_XAER_RMFAIL
    # Listed for everyone, but nobody else may finish it while it is attached.
    assert (1, 2, 0, "'q1'") in run(b, "XA RECOVER FORMAT='SQL'")  # the whole server's
    assert error_of(b, "XA COMMIT 'q1'") == ER_XAER_NOTA
    assert error_of(a, "XA COMMIT 'q1' ONE PHASE") == ER_XAER_INVAL
    # A prepared branch keeps its row locks.
    run(b, f"SET SESSION innodb_lock_wait_timeout = {LOCK_WAIT_S}")
    assert error_of(b, "UPDATE t SET v = 2 WHERE k = 1") == ER_LOCK_WAIT_TIMEOUT
    # The session ends: the branch stays prepared (MariaDB >= 10.5) and can be finished by
    # another session once the server has processed the disconnect (asynchronously).
    a.close()
    sessions.open.remove(a)
    for _ in range(DETACH_TRIES):
        try:
            run(b, "XA COMMIT 'q1'")
            break
        except pymysql.MySQLError as e:
            assert e.args[0] == ER_XAER_NOTA
            time.sleep(DETACH_WAIT_S)
    assert run(b, "SELECT v FROM t WHERE k = 1") == ((1,),)
    assert all(row[3] != "'q1'" for row in run(b, "XA RECOVER FORMAT='SQL'"))


def test_what_a_branch_refuses(sessions: Sessions) -> None:
    a, b = sessions.new(), sessions.new()
    run(a, "XA START 'q2'")
    assert error_of(a, "CREATE TABLE u (k INT)") == ER_XAER_RMFAIL  # no DDL in a branch
    assert error_of(a, "COMMIT") == ER_XAER_RMFAIL  # nor COMMIT / ROLLBACK
    assert error_of(b, "XA START 'q2'") == ER_XAER_DUPID  # one xid, one branch
    # A failed statement rolls back only itself: the branch goes on and prepares.
    run(a, "INSERT INTO t VALUES (5, 5)")
    assert error_of(a, "INSERT INTO t VALUES (5, 6)") == 1062
    run(a, "XA END 'q2'")
    run(a, "XA PREPARE 'q2'")
    run(a, "XA COMMIT 'q2'")
    assert run(b, "SELECT v FROM t WHERE k = 5") == ((5,),)


def test_xid_part_limits(sessions: Sessions) -> None:
    """A gtrid over 64 bytes is a syntax error, not a clear one: the SDK refuses longer txids
    itself (a 60-character txid is the longest that fits its gtrid)."""
    a = sessions.new()
    assert error_of(a, "XA START '" + "g" * 65 + "'") == ER_PARSE_ERROR
    assert error_of(a, "XA START 'g', 'b', 2147483648") == ER_PARSE_ERROR
    xid = make_xid("p" * 64, "t" * MAX_MYSQL_TXID, "db")
    run(a, f"XA START {xid.sql}")
    run(a, f"XA END {xid.sql}")
    run(a, f"XA ROLLBACK {xid.sql}")
    with pytest.raises(ValueError, match="at most 60"):
        make_xid("p", "t" * (MAX_MYSQL_TXID + 1), "db")
