"""Shared set-up: a database and Redis database of their own, rebuilt by the migrations.

Import this before any project module: it points the settings at the bench stores.
"""

from __future__ import annotations

import os
import statistics

os.environ.setdefault(
    "DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/tutorflow_bench"
)
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/5")
os.environ.setdefault("CACHE_URL", os.environ["REDIS_URL"])
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("LOG_JSON", "0")

from sqlalchemy import create_engine, text

from app.cli import ensure_database, upgrade_database
from core.config import settings


def fresh_database() -> None:
    """Drop and rebuild the bench schema with the Alembic migrations."""
    ensure_database(settings.database_url)
    engine = create_engine(settings.database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    upgrade_database()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table, ready for BENCHMARKS.md."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    return "\n".join([line, rule, *body])
