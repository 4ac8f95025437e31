"""The test suite's stores when pytest-xdist runs it in several processes.

`pytest -n N` starts worker processes named gw0, gw1, … (the PYTEST_XDIST_WORKER variable,
set before conftest is imported). Each gets a PostgreSQL database of its own (the name
suffixed `_gw1`) and a Redis database of its own (the number plus the worker's index), so
one worker's TRUNCATE, FLUSHDB or queued task never reaches another's. Run without -n, the
URLs are used as given.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy.engine import make_url


def worker_index() -> int | None:
    """0, 1, … in an xdist worker; None in a plain pytest run."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(name.removeprefix("gw")) if name.startswith("gw") else None


def per_worker_database(url: str) -> str:
    index = worker_index()
    if index is None:
        return url
    return sibling_database(url, f"gw{index}")


def per_worker_redis(url: str) -> str:
    index = worker_index()
    if index is None:
        return url
    parts = urlsplit(url)
    database = int(parts.path.strip("/") or 0) + index
    if database > 14:  # 15 is the second app's (tests/test_factory.py)
        raise RuntimeError(f"Redis database {database} for worker gw{index}: too few left")
    return urlunsplit(parts._replace(path=f"/{database}"))


def sibling_database(url: str, name: str) -> str:
    """The database beside `url`'s named with `_name` added (`tutorflow_test_migrations`;
    in an xdist worker `tutorflow_test_gw1_migrations`, as the URL given is its own)."""
    parsed = make_url(url)
    return parsed.set(database=f"{parsed.database}_{name}").render_as_string(hide_password=False)
