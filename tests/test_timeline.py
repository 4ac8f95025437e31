"""The payment's timeline tells the whole story — retries (attempt n of m, a short
reason), dead-lettering, replay (and a replay that failed again), discard — and the
public answer carries operator-safe reasons only. Logic, eager; with a real worker:
tests/test_dead_letters.py."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from domain.errors import NoTrainerAvailable
from domain.events import EventType, record_step_retry
from models import DeadLetter
from tasks.chains import fulfilment_chain
from tasks.pipeline import create_purchase
from tests.conftest import ADMIN, celery_app, student_auth
from tests.factories import make_course, make_payment, make_student

LETTERS = "/api/v1/admin/dead-letters"
REASON = "this step cannot succeed until an operator steps in"


def timeline(client, payment, headers=ADMIN) -> list[dict]:
    return client.get(f"/api/v1/payments/{payment.id}", headers=headers).json["timeline"]


def parked(db_session):
    """A payment never verified whose create_purchase step ran anyway (a replay of an
    old letter, say): it fails for good and is parked, as on a worker."""
    celery_app.conf.task_eager_propagates = False  # fail as a worker would: park it
    student, course = make_student(db_session), make_course(db_session)
    payment = make_payment(db_session, student, course)
    create_purchase.apply_async((str(payment.id),), {"correlation_id": str(payment.id)})
    return payment, student


def test_the_dead_letter_is_on_the_timeline_with_a_safe_reason(client, db_session, eager):
    payment, _ = parked(db_session)
    [letter] = db_session.scalars(select(DeadLetter)).all()
    last = timeline(client, payment)[-1]
    assert (last["type"], last["payload"]) == (
        EventType.DEAD_LETTERED,
        {"dead_letter_id": letter.id, "step": "create_purchase", "retries": 0, "reason": REASON},
    )


def test_a_replay_that_fails_again_links_the_new_letter_to_the_old_one(
    client, runner, db_session, eager
):
    payment, _ = parked(db_session)
    [first] = db_session.scalars(select(DeadLetter)).all()
    assert client.post(f"{LETTERS}/{first.id}/replay", headers=ADMIN).status_code == 200

    # Nothing was fixed: the replay failed again and parked a new letter.
    second = db_session.scalars(select(DeadLetter).where(DeadLetter.id != first.id)).one()
    assert second.replay_of == first.id
    assert (
        second.task_id == client.get(f"{LETTERS}/{first.id}", headers=ADMIN).json["replay_task_id"]
    )
    old = client.get(f"{LETTERS}/{first.id}", headers=ADMIN).json
    assert (old["status"], old["failed_again_as"]) == ("replayed", [second.id])
    new = client.get(f"{LETTERS}/{second.id}", headers=ADMIN).json
    assert (new["replay_of"], new["failed_again_as"]) == (first.id, [])
    shown = runner.invoke(args=["dead-letters", "show", str(first.id)]).output
    assert ["failed_again_as", f"[{second.id}]"] in [line.split() for line in shown.splitlines()]

    story = [(e["type"], e["payload"].get("dead_letter_id")) for e in timeline(client, payment)]
    assert story[-3:] == [
        (EventType.DEAD_LETTERED, first.id),
        (EventType.DEAD_LETTER_REPLAYED, first.id),
        (EventType.DEAD_LETTERED, second.id),
    ]
    [again] = [
        e["payload"]
        for e in timeline(client, payment)
        if e["type"] == EventType.DEAD_LETTERED and e["payload"]["dead_letter_id"] == second.id
    ]
    assert (again["replay_of"], again["replay_failed_again"]) == (first.id, True)

    # Discarding is told too.
    assert client.post(f"{LETTERS}/{second.id}/discard", headers=ADMIN).status_code == 200
    last = timeline(client, payment)[-1]
    assert (last["type"], last["payload"]["dead_letter_id"]) == (
        EventType.DEAD_LETTER_DISCARDED,
        second.id,
    )


def test_the_public_answer_names_no_exception_class_and_no_traceback(client, db_session, eager):
    payment, student = parked(db_session)
    answer = client.get(f"/api/v1/payments/{payment.id}", headers=student_auth(student.id))
    assert answer.status_code == 200
    [letter] = answer.json["fulfilment"]["dead_letters"]
    assert letter["reason"] == REASON
    assert "exception_type" not in letter and "exception_message" not in letter
    text = answer.get_data(as_text=True)
    for leak in ("PermanentStepError", "domain.errors", "Traceback", "Error", "succeeded"):
        assert leak not in text
    # The operator still has all of it.
    admin = client.get(f"{LETTERS}/{letter['id']}", headers=ADMIN).json
    assert admin["exception_type"] == "domain.errors.PermanentStepError"
    assert "is pending, not succeeded" in admin["exception_message"]
    assert "Traceback" in admin["traceback"]


def test_the_state_says_retrying_while_a_step_retries(client, db_session):
    student, course = make_student(db_session), make_course(db_session)
    verifying = make_payment(db_session, student, course)
    verifying.status = "confirming"
    verified = make_payment(db_session, make_student(db_session), course, confirmed=True)

    def state(payment) -> str:
        return client.get(f"/api/v1/payments/{payment.id}", headers=ADMIN).json["fulfilment"][
            "state"
        ]

    assert (state(verifying), state(verified)) == ("verifying", "confirmed")
    for payment, step in ((verifying, "verify_payment"), (verified, "create_purchase")):
        record_step_retry(
            db_session,
            correlation_id=payment.id,
            step=step,
            attempt=1,
            attempts=4,
            reason="the database was briefly unavailable",
        )
    db_session.flush()
    assert (state(verifying), state(verified)) == ("retrying", "retrying")
    last = timeline(client, verified)[-1]
    assert last == {
        "type": "STEP_RETRYING",
        "at": last["at"],
        "payload": {
            "step": "create_purchase",
            "attempt": 1,
            "attempts": 4,
            "reason": "the database was briefly unavailable",
        },
    }


def test_each_retry_is_told_with_its_attempt_and_a_safe_reason(client, db_session, eager):
    celery_app.conf.task_eager_propagates = False
    student, course = make_student(db_session), make_course(db_session)
    payment = make_payment(db_session, student, course, confirmed=True)  # no trainer teaches
    # Eager retries run nested in-process and the last failure comes back up to here.
    with pytest.raises(NoTrainerAvailable):
        fulfilment_chain(celery_app, str(payment.id)).apply_async()
    story = [(e["type"], e["payload"]) for e in timeline(client, payment)]
    retries = [p for t, p in story if t == EventType.STEP_RETRYING]
    assert retries == [
        {
            "step": "allocate_trainer",
            "attempt": n,
            "attempts": 6,
            "reason": "no trainer is free for this course and time yet",
        }
        for n in range(1, 6)
    ]
    assert story[-1][0] == EventType.DEAD_LETTERED
    assert [t for t, _ in story].count(EventType.DEAD_LETTERED) == 1
