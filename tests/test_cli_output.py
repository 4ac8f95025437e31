"""The dead-letter CLI as an operator reads it: a table with headers, a letter's fields
one per line with its traceback as printed, and no library log lines around them."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from pathlib import Path

import click
from flask.cli import ScriptInfo

from app import invoked_by_flask_cli
from app.where import stack_summary
from core.config import Settings
from core.tokens import TokenVerifier
from tests.conftest import open_session
from tests.factories import make_dead_letter

ROOT = Path(__file__).resolve().parent.parent


def _a_real_traceback() -> str:
    try:
        {}["missing"]
    except KeyError:
        return traceback.format_exc()
    raise AssertionError("unreachable")


def test_list_prints_a_table_under_headers(runner, db_session):
    first = make_dead_letter(db_session)
    second = make_dead_letter(db_session, step="tutorflow.pipeline.allocate_trainer")
    result = runner.invoke(args=["dead-letters", "list"])
    assert result.exit_code == 0, result.output
    header, *rows, summary = result.output.splitlines()
    assert header.split() == ["ID", "STATUS", "LAST", "FAILED", "(UTC)", "TASK", "PAYMENT", "ERROR"]
    assert summary == "2 of 2 shown"
    assert len(rows) == 2
    # Columns line up: each value starts under its header.
    for row, letter in zip(rows, (second, first), strict=True):  # newest first
        assert row.startswith(str(letter.id))
        assert row.index(letter.task_name) == header.index("TASK")
        assert row.index(str(letter.correlation_id)) == header.index("PAYMENT")
        assert row.index("domain.errors.PermanentStepError: payment") == header.index("ERROR")


def test_show_prints_fields_and_the_traceback_as_printed(runner, db_session):
    printed = _a_real_traceback()
    letter = make_dead_letter(db_session, traceback=printed)
    result = runner.invoke(args=["dead-letters", "show", str(letter.id)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.split() == ["task_id", letter.task_id] for line in lines)
    assert any(line.split() == ["status", "open"] for line in lines)
    assert any(
        line.split()[:2] == ["exception_type", "domain.errors.PermanentStepError"] for line in lines
    )
    assert "\\n" not in result.output  # not one escaped string
    assert result.output.rstrip().endswith(printed.rstrip())
    assert lines[lines.index("traceback:") + 1] == "Traceback (most recent call last):"


def test_a_cli_command_prints_no_library_log_lines(committed):
    """A real `flask` process, logging JSON at INFO as in production: before the fix
    Alembic's import printed seven JSON lines ahead of every command, --help included."""
    with open_session() as session, session.begin():
        letter = make_dead_letter(session)
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "dead-letters", "list"],
        env={**os.environ, "LOG_JSON": "1", "LOG_LEVEL": "INFO", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines()[0].startswith("ID ")
    assert result.stdout.splitlines()[1].startswith(f"{letter.id} ")


def test_urls_prints_every_part_and_only_development_secrets():
    development = Settings.from_env({})  # make up's: no exports
    printed = stack_summary(development)
    for url in (
        "http://127.0.0.1:8000/docs",
        "http://127.0.0.1:8000/students/1#token=",
        "http://127.0.0.1:5555",
        "http://127.0.0.1:12111",
        "http://127.0.0.1:8000/readyz",
    ):
        assert url in printed, url
    assert "dev-admin-token" in printed and "admin:admin" in printed
    assert "issue-token --student 1" in printed
    token = printed.split("#token=")[1].split()[0]
    assert TokenVerifier(development).verify(token).student_id == 1

    assert "smtp://127.0.0.1:1025" in printed  # where mail goes

    real = Settings.from_env(
        {
            "ADMIN_TOKEN": "s3cret-admin",
            "FLOWER_BASIC_AUTH": "ops:s3cret",
            "JWT_SECRET": "x" * 40,
            "SMTP_URL": "smtps://mailer:s3cret@smtp.example.org:465",
        }
    )
    printed = stack_summary(real)
    assert "s3cret" not in printed and "#token=" not in printed
    assert "smtps://smtp.example.org:465" in printed
    assert "(from ADMIN_TOKEN)" in printed and "(from FLOWER_BASIC_AUTH)" in printed


def test_the_urls_command_prints_them(runner):
    result = runner.invoke(args=["urls"])
    assert result.exit_code == 0, result.output
    assert "/docs" in result.output and "(from ADMIN_TOKEN)" in result.output  # tests set it


def test_commands_are_quiet_but_not_the_development_server_nor_gunicorn():
    info = ScriptInfo()
    for name, quiet in (("dead-letters", True), ("ensure-db", True), ("run", False)):
        with click.Context(click.Command(name), info_name=name, obj=info):
            assert invoked_by_flask_cli() is quiet, name
    assert invoked_by_flask_cli() is False  # no click command at all: gunicorn, tests
