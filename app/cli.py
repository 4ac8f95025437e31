"""`flask ...` commands: database bootstrap and the demo catalogue."""

from __future__ import annotations

import click
from alembic import command
from alembic.config import Config
from flask import Flask, current_app
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from domain import catalogue
from models import Course, open_session


def ensure_database(url: str) -> bool:
    """Create the database named in `url` if it does not exist; True if created."""
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            exists = connection.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": target.database},
            )
            if not exists:
                connection.execute(text(f'CREATE DATABASE "{target.database}"'))
            return not exists
    finally:
        admin.dispose()


def upgrade_database() -> None:
    command.upgrade(Config("alembic.ini"), "head")


DEMO_TRAINERS = [
    ("Ada Lovelace", "ada@tutorflow.example", 40),
    ("Alan Turing", "alan@tutorflow.example", 40),
    ("Grace Hopper", "grace@tutorflow.example", 40),
]


def seed_demo() -> dict[str, int]:
    """A demo catalogue (idempotent): two courses, three trainers, one student."""
    with open_session() as session, session.begin():
        if session.scalar(select(Course.id).limit(1)) is not None:
            return {"created": 0}
        courses = [
            catalogue.create_course(session, title=title)
            for title in ("Algebra I", "Conversational Spanish")
        ]
        for name, email, capacity in DEMO_TRAINERS:
            catalogue.create_trainer(
                session,
                name=name,
                email=email,
                max_students=capacity,
                course_ids=[c.id for c in courses],
            )
        student = catalogue.create_student(
            session,
            name="Demo Student",
            email="student@tutorflow.example",
            timezone="Europe/Berlin",
        )
        return {"created": 1, "student_id": student.id, "course_id": courses[0].id}


def register_cli(app: Flask) -> None:
    @app.cli.command("ensure-db")
    def ensure_db_command() -> None:
        """Create the database if missing and migrate it to head."""
        if ensure_database(current_app.config["DATABASE_URL"]):
            click.echo("created database")
        upgrade_database()
        click.echo("database at head")

    @app.cli.command("seed-demo")
    def seed_demo_command() -> None:
        """Load the demo catalogue (no-op if a catalogue exists)."""
        result = seed_demo()
        click.echo("demo catalogue loaded" if result["created"] else "catalogue already present")
