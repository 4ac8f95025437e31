"""The operator's view of one payment (GET /api/v1/admin/payments/{id}): the chain's
steps in order, each run with its task id, duration and Flower link, the retries and
the dead letters — and who may read it. Logic, eager; the page itself in Chromium with a
real worker: tests/test_browser_payment_page.py."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from domain.errors import NoTrainerAvailable
from models import DeadLetter, StepRun
from tasks.chains import fulfilment_chain
from tests.conftest import ADMIN, celery_app, settings, student_auth
from tests.factories import make_course, make_payment, make_student, make_trainer

CHAIN = ["verify_payment", "create_purchase", "allocate_trainer", "schedule_sessions"]


def chain_of(client, payment_id) -> dict:
    answer = client.get(f"/api/v1/admin/payments/{payment_id}", headers=ADMIN)
    assert answer.status_code == 200, answer.json
    return answer.json


def flower_task(task_id: str) -> str:
    return f"{settings.flower_public_url.rstrip('/')}/task/{task_id}"


def test_a_fulfilled_chain_shows_each_step_once_in_order_with_its_task_and_duration(
    client, db_session, eager
):
    student, course = make_student(db_session), make_course(db_session)
    make_trainer(db_session, [course])
    payment = make_payment(db_session, student, course, confirmed=True)
    fulfilment_chain(celery_app, str(payment.id)).apply_async()

    shown = chain_of(client, payment.id)
    runs = db_session.scalars(select(StepRun).order_by(StepRun.id)).all()
    assert [run.step.rsplit(".", 1)[-1] for run in runs] == CHAIN
    assert [s["step"] for s in shown["steps"]] == CHAIN
    for step, run in zip(shown["steps"], runs, strict=True):
        assert (step["status"], step["retries"], step["dead_letter_ids"]) == ("done", 0, [])
        [seen] = step["runs"]
        assert seen["task_id"] == run.task_id
        assert seen["flower_url"] == flower_task(run.task_id)
        assert run.started_at <= run.finished_at
        assert seen["duration_ms"] == round(
            (run.finished_at - run.started_at).total_seconds() * 1000
        )
    assert len({run.task_id for run in runs}) == len(CHAIN)  # one task per step
    assert shown["fulfilment"]["state"] == "scheduled"
    assert shown["trace_ids"] == []  # tracing is off in this process
    assert shown["flower_url"] == settings.flower_public_url


def test_a_dead_lettered_step_shows_its_retries_its_letter_and_the_steps_not_run(
    client, db_session, eager
):
    celery_app.conf.task_eager_propagates = False  # park it, as a worker would
    student, course = make_student(db_session), make_course(db_session)
    payment = make_payment(db_session, student, course, confirmed=True)  # no trainer
    with pytest.raises(NoTrainerAvailable):
        fulfilment_chain(celery_app, str(payment.id)).apply_async()
    letter = db_session.scalars(select(DeadLetter)).one()

    shown = chain_of(client, payment.id)
    status = {s["step"]: (s["status"], s["retries"], s["dead_letter_ids"]) for s in shown["steps"]}
    assert status == {
        "verify_payment": ("done", 0, []),
        "create_purchase": ("done", 0, []),
        "allocate_trainer": ("dead_lettered", 5, [letter.id]),
        "schedule_sessions": ("not_run", 0, []),
    }
    [shown_letter] = shown["dead_letters"]
    assert shown_letter["id"] == letter.id
    assert shown_letter["status"] == "open"
    assert shown_letter["retries"] == 5
    assert shown_letter["reason"] == "no trainer is free for this course and time yet"
    assert shown_letter["exception_type"] == "domain.errors.NoTrainerAvailable"
    assert shown_letter["flower_url"] == flower_task(letter.task_id)


def test_only_an_operator_reads_it_and_an_unknown_or_bad_id_is_a_clear_4xx(client, db_session):
    student, course = make_student(db_session), make_course(db_session)
    payment = make_payment(db_session, student, course)
    path = f"/api/v1/admin/payments/{payment.id}"

    for headers in ({}, {"Authorization": "Bearer wrong"}, student_auth(student.id)):
        refused = client.get(path, headers=headers)
        assert refused.status_code == 401
        assert refused.json["error"]["code"] == "unauthorized"
    unknown = client.get(f"/api/v1/admin/payments/{uuid.uuid4()}", headers=ADMIN)
    assert (unknown.status_code, unknown.json["error"]["code"]) == (404, "payment_not_found")
    for bad in ("42", "not-a-uuid", "%00", "9" * 400):
        answer = client.get(f"/api/v1/admin/payments/{bad}", headers=ADMIN)
        assert answer.status_code == 404 and answer.is_json, bad
        page = client.get(f"/admin/payments/{bad}")
        assert page.status_code == 404, bad


def test_the_page_is_html_without_data_or_secret(client, db_session):
    student, course = make_student(db_session), make_course(db_session)
    payment = make_payment(db_session, student, course)
    page = client.get(f"/admin/payments/{payment.id}")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    text = page.get_data(as_text=True)
    assert settings.admin_token not in text
    assert str(payment.id) not in text  # the script reads it from the address
    assert "sessionStorage" in text and "Authorization" in text
