"""Small database probes shared by the SDK's tests."""

from __future__ import annotations

from sqlalchemy import Engine, text


def rollback_all_prepared(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        gids = conn.execute(
            text("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()")
        ).scalars()
        for gid in list(gids):
            conn.exec_driver_sql(f"ROLLBACK PREPARED '{gid}'")


def prepared_gids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()")
            ).scalars()
        )


def items(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {r.k: r.v for r in conn.execute(text("SELECT k, v FROM items"))}


def record_state(engine: Engine, participant: str, txid: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT state FROM txc_participant_record WHERE participant = :p AND txid = :t"),
            {"p": participant, "t": txid},
        ).scalar_one_or_none()
