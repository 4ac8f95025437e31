"""`flask ...` commands: database bootstrap and the demo catalogue."""

from __future__ import annotations

import json
from datetime import UTC, timedelta

import click
from alembic import command
from alembic.config import Config
from flask import Flask
from flask.cli import AppGroup
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from actions import dead_letters
from app.runtime import runtime
from app.schemas import DeadLetterOut
from domain import catalogue
from domain.dead_letters import LetterFilter
from domain.errors import DomainError
from domain.read_models import get_dead_letter, list_dead_letters
from models import Course, Database, DeadLetter


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


def upgrade_database(url: str | None = None) -> None:
    config = Config("alembic.ini")
    # The process's logging stays as configured (Alembic's fileConfig would replace it,
    # and print its INFO lines in the middle of a command's output).
    config.attributes["configure_logger"] = False
    if url is not None:
        config.attributes["database_url"] = url
    command.upgrade(config, "head")


DEMO_TRAINERS = [
    ("Ada Lovelace", "ada@tutorflow.example", 40),
    ("Alan Turing", "alan@tutorflow.example", 40),
    ("Grace Hopper", "grace@tutorflow.example", 40),
]


def seed_demo(database: Database) -> dict[str, int]:
    """A demo catalogue (idempotent): two courses, three trainers, one student."""
    with database.transaction() as session:
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


dead_letters_cli = AppGroup("dead-letters", help="List, show, replay or discard dead letters.")


LIST_HEADERS = ("ID", "STATUS", "LAST FAILED (UTC)", "TASK", "PAYMENT", "ERROR")


def _letter_row(letter: DeadLetter) -> tuple[str, ...]:
    return (
        str(letter.id),
        letter.status,
        f"{letter.last_failed_at:%Y-%m-%d %H:%M:%S}",
        letter.task_name,
        letter.correlation_id or "-",
        _shortened(f"{letter.exception_type}: {letter.exception_message}", 80),
    )


def _shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Plain columns under a header line: readable, and still one record per line for
    grep and awk (the last column is not padded)."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    )


def format_letter(letter: DeadLetter) -> str:
    """Every field of the admin API's answer on its own line, under the API's names, then
    the traceback as it was printed, not as one escaped JSON string."""
    fields = DeadLetterOut().dump(letter)
    traceback = fields.pop("traceback", "") or ""
    width = max(len(name) for name in fields)
    lines = [
        f"{name:<{width}}  " + (json.dumps(value) if isinstance(value, list | dict) else str(value))
        for name, value in fields.items()
    ]
    return "\n".join([*lines, "", "traceback:", traceback.rstrip()])


@dead_letters_cli.command("list")
@click.option("--status", type=click.Choice(["open", "replayed", "discarded"]), default=None)
@click.option("--task", "task_name", default=None, help="Full task name.")
@click.option("--correlation-id", default=None, help="The payment id.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
def list_command(
    status: str | None, task_name: str | None, correlation_id: str | None, limit: int
) -> None:
    """Newest first."""
    with runtime().database.session() as session:
        letters, total = list_dead_letters(
            session,
            status=status,
            task_name=task_name,
            correlation_id=correlation_id,
            per_page=limit,
        )
    if letters:
        click.echo(format_table(LIST_HEADERS, [_letter_row(letter) for letter in letters]))
    click.echo(f"{len(letters)} of {total} shown")


@dead_letters_cli.command("show")
@click.argument("letter_id", type=int)
def show_command(letter_id: int) -> None:
    with runtime().database.session() as session:
        letter = _or_fail(lambda: get_dead_letter(session, letter_id))
        click.echo(format_letter(letter))


def _or_fail(action):
    try:
        return action()
    except DomainError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from exc


DRY_RUN_SHOWN = 10


def letter_filters(command):
    """The filters of a bulk replay or discard (domain.dead_letters.LetterFilter)."""
    when = click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])
    options = [
        click.option("--all", "bulk", is_flag=True, help="Every open letter matching the filters."),
        click.option("--task", "task_name", default=None, help="Full task name."),
        click.option("--error-type", "exception_type", default=None, help="Full or class name."),
        click.option("--from", "failed_from", type=when, help="Parked at or after (UTC)."),
        click.option("--until", "failed_until", type=when, help="Parked before (UTC)."),
        click.option("--course", "course_id", type=click.IntRange(1), help="Course id."),
        click.option("--correlation-id", default=None, help="The payment id."),
        click.option("--dry-run", is_flag=True, help="Count and show a sample; change nothing."),
        click.option("--yes", is_flag=True, help="Do not ask for confirmation."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _bulk(action: str, letter_id: int | None, bulk: bool, **options) -> None:
    """One letter by id, or every open letter matching the filters: count, sample on a
    dry run, confirmation (unless --yes), then a progress bar."""
    dry_run, yes = options.pop("dry_run"), options.pop("yes")
    for name in ("failed_from", "failed_until"):
        if options[name] is not None:
            options[name] = options[name].replace(tzinfo=UTC)
    filters = LetterFilter(**options)
    if (letter_id is None) == (not bulk and filters == LetterFilter()):
        raise click.UsageError("give either a LETTER_ID or --all and/or filters")
    database = runtime().database
    doing, past = {"replay": ("replaying", "replayed"), "discard": ("discarding", "discarded")}[
        action
    ]
    if letter_id is not None:
        _or_fail(lambda: dead_letters.BULK[action](database, letter_id))
        click.echo(f"{past} {letter_id}")
        return
    ids = dead_letters.matching(database, filters)
    click.echo(f"{len(ids)} open dead letters match")
    if dry_run:
        with database.session() as session:
            for one in ids[:DRY_RUN_SHOWN]:
                letter = get_dead_letter(session, one)
                click.echo(
                    f"  {one}  {letter.task_name}  {letter.correlation_id}  {letter.exception_type}"
                )
        click.echo(f"dry run: nothing {past}")
        return
    if not ids:
        return
    if not yes:
        click.confirm(f"{action} {len(ids)} dead letters?", abort=True)
    skipped = 0
    with click.progressbar(
        dead_letters.each(database, action, ids),
        length=len(ids),
        label=f"{doing} {len(ids)} dead letters",
    ) as bar:
        for _, acted in bar:
            skipped += not acted  # replayed or discarded meanwhile by someone else
    click.echo(f"{past} {len(ids) - skipped}, skipped {skipped}")


@dead_letters_cli.command("replay")
@click.argument("letter_id", type=int, required=False)
@letter_filters
def replay_command(letter_id: int | None, bulk: bool, **options) -> None:
    """Re-publish the failed task with its arguments and the rest of its chain: one
    letter, or every open one matching the filters."""
    _bulk("replay", letter_id, bulk, **options)


@dead_letters_cli.command("discard")
@click.argument("letter_id", type=int, required=False)
@letter_filters
def discard_command(letter_id: int | None, bulk: bool, **options) -> None:
    """Close without running: one letter, or every open one matching the filters."""
    _bulk("discard", letter_id, bulk, **options)


def register_cli(app: Flask) -> None:
    app.cli.add_command(dead_letters_cli)

    @app.cli.command("ensure-db")
    def ensure_db_command() -> None:
        """Create the database if missing and migrate it to head."""
        url = runtime().settings.database_url
        if ensure_database(url):
            click.echo("created database")
        upgrade_database(url)
        click.echo("database at head")

    @app.cli.command("issue-token")
    @click.option("--student", "student_id", required=True, type=click.IntRange(1))
    @click.option("--hours", default=12.0, show_default=True, type=click.FloatRange(0.01, 24 * 30))
    def issue_token_command(student_id: int, hours: float) -> None:
        """A student's bearer token, for development (HS256 with JWT_SECRET): in
        production the platform's identity provider issues them."""
        verifier = runtime().tokens
        click.echo(verifier.issue(student_id, ttl=timedelta(hours=hours)))

    @app.cli.command("urls")
    def urls_command() -> None:
        """Where the stack's parts are and the development credentials (make up)."""
        from app.where import stack_summary

        click.echo(stack_summary(runtime().settings))

    @app.cli.command("seed-demo")
    def seed_demo_command() -> None:
        """Load the demo catalogue (no-op if a catalogue exists)."""
        result = seed_demo(runtime().database)
        click.echo("demo catalogue loaded" if result["created"] else "catalogue already present")
