"""A database made from nothing for tests, benchmarks and the soak: the schema dropped and
built again by the Alembic migrations. Never an operator's command: operators create and
migrate (`flask ensure-db`), they do not drop."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from app.cli import ensure_database, upgrade_database


def rebuild_database(url: str) -> None:
    """Drop everything in `url`'s database (created if missing) and migrate from scratch."""
    ensure_database(url)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()
    upgrade_database(url)
