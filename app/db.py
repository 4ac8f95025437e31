"""The request's database session (reads): opened on first use, closed at teardown.
Writes go through the application actions (actions/), one transaction each."""

from __future__ import annotations

from flask import Flask, g
from sqlalchemy.orm import Session

from app.runtime import runtime


def db() -> Session:
    if "db_session" not in g:
        g.db_session = runtime().database.session()
    return g.db_session


def init_app(app: Flask) -> None:
    @app.teardown_appcontext
    def _close(_: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            session.close()  # rolls back whatever was not committed
