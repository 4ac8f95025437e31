"""Logs a person can read: text by default (`make up`), JSON lines in the image and
compose; the outbox relay, which runs every few seconds, says
nothing above DEBUG when it had nothing to do, and Celery's own lines about it are DEBUG
too; a relay that published something says so at INFO. A payment's steps say their
outcome once each."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from celery.app.trace import LOG_FAILURE, LOG_IGNORED, LOG_REJECTED, LOG_RETRY
from celery.beat import ScheduleEntry, Scheduler
from sqlalchemy import update
from sqlalchemy.orm import Session

import tasks.celery_app
from core.config import Settings
from core.logs import configure_logging, log_context
from domain.payments import request_confirmation
from models import OutboxMessage
from tasks import chains
from tasks.beat import relay_outbox
from tasks.chains import fulfilment_chain
from tests.conftest import celery_app
from tests.factories import make_course, make_payment, make_student, make_trainer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _beat_records(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tasks.beat" and r.levelno == level]


def test_an_idle_relay_logs_at_debug_and_a_busy_one_at_info(db_connection, caplog):
    caplog.set_level(logging.DEBUG, logger="tasks.beat")
    assert relay_outbox() == {"published": 0, "failed": 0}
    assert _beat_records(caplog, logging.DEBUG) == ["outbox relay: nothing to publish"]
    assert _beat_records(caplog, logging.INFO) == []

    # A hand-off committed but never published (a plain Session has no after-commit
    # channel), older than the grace the API's own publish gets.
    with Session(bind=db_connection, join_transaction_mode="create_savepoint") as session:
        student, course = make_student(session), make_course(session)
        payment_id = make_payment(session, student, course, paid=True).id
        request_confirmation(session, payment_id, student_id=None, source="test")
        long_ago = datetime.now(UTC) - timedelta(hours=1)
        session.execute(update(OutboxMessage).values(created_at=long_ago, next_attempt_at=long_ago))
        session.commit()
    caplog.clear()
    assert relay_outbox() == {"published": 1, "failed": 0}
    assert _beat_records(caplog, logging.INFO) == ["outbox relay"]
    assert _beat_records(caplog, logging.DEBUG) == []


def test_celery_lines_about_the_relay_are_debug_others_stay_info(
    db_connection, eager, capsys, restore_root_logging
):
    """The worker's real logging set-up (the setup_logging signal's handler) and Celery's
    real lines: beat's "sending due task" and the run's "succeeded" (eagerly, in this
    process). The relay's are gone at INFO, while those of a job run after it print."""
    tasks.celery_app._configure_logging()
    scheduler = Scheduler(celery_app, lazy=True)
    for name, task in (
        ("relay-outbox", "tutorflow.beat.relay_outbox"),
        ("prune-retention", "tutorflow.beat.prune_retention"),
    ):
        scheduler.apply_entry(ScheduleEntry(name=name, task=task, app=celery_app, schedule=5.0))
    err = capsys.readouterr().err
    assert "INFO celery.beat Scheduler: Sending due task prune-retention" in err
    assert "tutorflow.beat.prune_retention[" in err and "succeeded" in err
    assert "relay" not in err

    logging.getLogger().setLevel(logging.DEBUG)
    celery_app.tasks["tutorflow.beat.relay_outbox"].apply()
    relay_lines = [line for line in capsys.readouterr().err.splitlines() if "relay_outbox[" in line]
    assert relay_lines and all(" DEBUG celery.app.trace " in line for line in relay_lines)


def test_logs_are_text_by_default_and_json_in_the_image_and_compose():
    assert Settings.from_env({}).log_json is False  # make up: a developer reads them
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    environment = compose["x-tutorflow"]["environment"]
    assert Settings.from_env({k: str(v) for k, v in environment.items()}).log_json is True
    assert re.search(r"^\s*LOG_JSON=1\b", (ROOT / "Dockerfile").read_text(), re.MULTILINE)


def test_a_text_line_names_only_the_ids_that_are_set(restore_root_logging):
    buffer = io.StringIO()
    configure_logging("INFO", json_lines=False, stream=buffer)
    log = logging.getLogger("tutorflow.test")
    log.info("plain")
    with log_context(correlation_id="pay-1", task_id="task-2"):
        log.info("in a task", extra={"published": 2, "to": "bob@example.org"})
    plain, in_task = buffer.getvalue().splitlines()
    assert re.fullmatch(r"\S+Z INFO tutorflow\.test plain", plain)
    assert in_task.endswith(
        "INFO tutorflow.test [correlation_id=pay-1 task_id=task-2] in a task"
        " published=2 to=b***@example.org"  # extra fields too, masked as in JSON
    )
    assert "None" not in buffer.getvalue()


def test_a_text_line_leaves_out_extra_fields_that_repeat_its_arguments(restore_root_logging):
    """The API's request line: method, path and status are the message's arguments and
    `extra` fields too; the text line shows them once, the JSON line keeps the fields."""
    log = logging.getLogger("tutorflow.requests")
    fields = {"method": "GET", "path": "/healthz", "status": 200, "duration_ms": 0.17}
    for json_lines in (False, True):
        buffer = io.StringIO()
        configure_logging("INFO", json_lines=json_lines, stream=buffer)
        log.info("%s %s %s", "GET", "/healthz", 200, extra=fields)
        printed = buffer.getvalue()
        if json_lines:
            line = json.loads(printed)
            assert line["message"] == "GET /healthz 200"
            assert {name: line[name] for name in fields} == fields
            assert "message_args" not in line
        else:
            assert printed.rstrip("\n").endswith(
                "INFO tutorflow.requests GET /healthz 200 duration_ms=0.17"
            )


def test_a_payments_steps_say_their_outcome_once_and_celerys_lines_about_them_are_debug(
    db_session, eager, capsys, restore_root_logging
):
    """The worker's real logging set-up, a payment's chain run eagerly: one "step done"
    line a step, naming it; Celery's "succeeded" lines about those steps and the stripe
    library's request and response lines are gone at INFO. refresh_student_views logs no
    outcome of its own, so Celery's line about it stays."""
    tasks.celery_app._configure_logging()
    student, course = make_student(db_session), make_course(db_session)
    make_trainer(db_session, [course], max_students=2)
    payment = make_payment(db_session, student, course)  # paid at the sandbox
    request_confirmation(db_session, payment.id, student_id=None, source="test")
    db_session.flush()
    capsys.readouterr()
    fulfilment_chain(celery_app, str(payment.id)).apply_async()
    err = capsys.readouterr().err

    assert re.findall(r" INFO actions\.steps .*step done step=(\S+)", err) == [
        chains.VERIFY_PAYMENT,
        chains.CREATE_PURCHASE,
        chains.ALLOCATE_TRAINER,
        chains.SCHEDULE_SESSIONS,
    ]
    assert re.findall(r" INFO celery\.app\.trace Task (\S+)\[\S+\] succeeded", err) == [
        chains.REFRESH_STUDENT_VIEWS
    ]
    assert " stripe " not in err  # the verify step asked the sandbox through the library


@pytest.mark.parametrize(
    "line", [LOG_RETRY, LOG_FAILURE, LOG_IGNORED, LOG_REJECTED, {"a message": "not a string"}]
)
def test_celerys_other_lines_about_those_steps_stay(line):
    record = logging.LogRecord(
        "celery.app.trace",
        logging.INFO,
        __file__,
        0,
        line,
        ({"name": chains.CREATE_PURCHASE, "id": "t-1", "exc": "boom", "description": "x"},),
        None,
    )
    assert tasks.celery_app.RoutineTasksAtDebug().filter(record)
    assert record.levelno == logging.INFO
