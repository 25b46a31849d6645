"""A participant process for the MariaDB crash tests: prepares the work of the given txids
(one row in `items` each), says so on stdout, and waits to be killed.

    python -m tests.sdk.mysql_crash_worker DATABASE_URL COORDINATOR_URL [--before-record] TXID...

`--before-record`: stop inside the first txid's request right after its XA PREPARE, before
the record is written (prints PREPARED-NO-RECORD), i.e. the window where a crash leaves a
prepared branch that no record and no coordinator knows of.
"""

from __future__ import annotations

import sys
import threading

from sqlalchemy import text

from participant_sdk import mysql_record
from participant_sdk.mysql_engine import create_engine
from participant_sdk.mysql_resource import MySqlResourceManager

WAIT_FOR_KILL_S = 600.0  # the test kills it long before


def main(argv: list[str]) -> None:
    url, coordinator_url, *rest = argv
    before_record = "--before-record" in rest
    txids = [a for a in rest if not a.startswith("--")]
    if before_record:
        real = mysql_record.insert_if_absent

        def stop_here(*args: object, **kwargs: object) -> bool:
            print("PREPARED-NO-RECORD", flush=True)
            threading.Event().wait(WAIT_FOR_KILL_S)
            return real(*args, **kwargs)  # type: ignore[arg-type]

        mysql_record.insert_if_absent = stop_here  # type: ignore[assignment]
    engine = create_engine(url)
    rm = MySqlResourceManager(
        "svc", engine, public_url="http://127.0.0.1:9", coordinator_url=coordinator_url
    )
    for txid in txids:
        with rm.work(txid) as w:
            w.connection.execute(text("INSERT INTO items VALUES (:k, 1)"), {"k": txid[:8]})
        print(f"PREPARED {txid}", flush=True)
    print("READY", flush=True)
    threading.Event().wait(WAIT_FOR_KILL_S)


if __name__ == "__main__":
    main(sys.argv[1:])
