"""Bulk replay and discard by filter (task, error type, time range, course, payment):
admin API and CLI, with dry runs, counts and a confirmation. Logic, eager; delivery of a
replay: tests/test_dead_letters.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from models import DeadLetter, FailureKind, OutboxKind, OutboxMessage
from tests.conftest import ADMIN, celery_app
from tests.factories import make_course, make_dead_letter, make_payment, make_student

URL = "/api/v1/admin/dead-letters"
ALLOCATE = "tutorflow.pipeline.allocate_trainer"
NO_TRAINER = "domain.errors.NoTrainerAvailable"
T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
NO_TRAINER_FOR_ALLOCATE = {
    "step": ALLOCATE,
    "exception_type": NO_TRAINER,
    "kind": FailureKind.NO_TRAINER,
}


@pytest.fixture
def letters(db_session):
    """Five open letters (and a discarded one) that differ in one filter each."""
    student, course, other = make_student(db_session), make_course(db_session), None
    other = make_course(db_session, title="Spanish")
    in_course = make_payment(db_session, student, course)
    in_other = make_payment(db_session, make_student(db_session), other)

    def letter(at: datetime, **overrides):
        return make_dead_letter(db_session, first_failed_at=at, last_failed_at=at, **overrides).id

    return {
        "purchase": letter(T0),
        "allocate_early": letter(T0, **NO_TRAINER_FOR_ALLOCATE, correlation_id=str(in_course.id)),
        "allocate_late": letter(
            T0 + timedelta(hours=2),
            **NO_TRAINER_FOR_ALLOCATE,
            correlation_id=str(in_other.id),
        ),
        "discarded": letter(T0, **NO_TRAINER_FOR_ALLOCATE, status="discarded"),
        "course": course.id,
    }


def statuses(db_session) -> dict[int, str]:
    db_session.expire_all()
    return dict(db_session.execute(select(DeadLetter.id, DeadLetter.status)).tuples().all())


def outbox_rows(db_session) -> int:
    """The replays' messages (each resolved letter also asks for a settle)."""
    return db_session.scalar(
        select(func.count())
        .select_from(OutboxMessage)
        .where(OutboxMessage.kind == OutboxKind.REPLAY_DEAD_LETTER)
    )


def test_a_dry_run_counts_and_lists_the_matching_open_letters_and_changes_nothing(
    client, db_session, letters
):
    before = statuses(db_session)
    answer = client.post(
        f"{URL}/replay",
        json={"exception_type": "NoTrainerAvailable", "dry_run": True},
        headers=ADMIN,
    )
    assert answer.status_code == 200, answer.json
    assert answer.json == {
        "action": "replay",
        "dry_run": True,
        "matched": 2,
        "ids": [letters["allocate_early"], letters["allocate_late"]],
        "skipped": [],
    }
    assert statuses(db_session) == before
    assert outbox_rows(db_session) == 0


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"task_name": ALLOCATE}, ["allocate_early", "allocate_late"]),
        ({"exception_type": NO_TRAINER}, ["allocate_early", "allocate_late"]),
        ({"exception_type": "PermanentStepError"}, ["purchase"]),
        ({"failed_from": (T0 + timedelta(hours=1)).isoformat()}, ["allocate_late"]),
        (
            {"failed_from": T0.isoformat(), "failed_until": (T0 + timedelta(hours=1)).isoformat()},
            ["purchase", "allocate_early"],
        ),
        ({"course_id": "course"}, ["allocate_early"]),
        ({"task_name": ALLOCATE, "failed_until": T0.isoformat()}, []),
        ({"all": True}, ["purchase", "allocate_early", "allocate_late"]),
    ],
)
def test_each_filter_picks_its_open_letters(client, db_session, letters, body, expected):
    if body.get("course_id") == "course":
        body = {"course_id": letters["course"]}
    answer = client.post(f"{URL}/discard", json={**body, "dry_run": True}, headers=ADMIN)
    assert answer.status_code == 200, answer.json
    assert answer.json["ids"] == [letters[name] for name in expected]
    assert answer.json["matched"] == len(expected)


def test_bulk_discard_acts_on_the_matching_letters_only(client, db_session, letters):
    answer = client.post(f"{URL}/discard", json={"task_name": ALLOCATE}, headers=ADMIN)
    assert answer.status_code == 200, answer.json
    assert answer.json["dry_run"] is False
    assert answer.json["matched"] == 2
    assert answer.json["ids"] == [letters["allocate_early"], letters["allocate_late"]]
    after = statuses(db_session)
    assert after[letters["allocate_early"]] == after[letters["allocate_late"]] == "discarded"
    assert after[letters["purchase"]] == "open"
    # Once more: nothing is open there any longer.
    again = client.post(f"{URL}/discard", json={"task_name": ALLOCATE}, headers=ADMIN)
    assert again.json["matched"] == 0


def test_bulk_replay_goes_through_the_outbox_once_per_letter(client, db_session, letters, eager):
    celery_app.conf.task_eager_propagates = False  # replays of payment-less letters fail
    answer = client.post(
        f"{URL}/replay", json={"exception_type": "PermanentStepError"}, headers=ADMIN
    )
    assert answer.status_code == 200, answer.json
    assert answer.json["ids"] == [letters["purchase"]]
    assert statuses(db_session)[letters["purchase"]] == "replayed"
    assert outbox_rows(db_session) == 1


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"dry_run": True},
        {"all": True, "task_name": ALLOCATE},
        {"failed_from": "2026-11-20T10:00:00"},  # no UTC offset
        {"failed_from": "yesterday"},
        {"course_id": 0},
        {"course_id": "1"},
        {"task_name": ""},
        {"dry_run": "yes", "all": True},
        {"colour": "red", "all": True},
    ],
)
def test_a_bad_filter_is_422_json_and_changes_nothing(client, db_session, letters, body):
    before = statuses(db_session)
    for action in ("replay", "discard"):
        answer = client.post(f"{URL}/{action}", json=body, headers=ADMIN)
        assert answer.status_code == 422, (body, answer.json)
        assert "error" in answer.json
    assert statuses(db_session) == before


@pytest.mark.parametrize("hours", [0, -1])
def test_a_range_that_ends_before_it_starts_matches_no_letter(client, db_session, letters, hours):
    """As in the CLI: an empty range is a filter no letter passes (200, matched 0), not
    a malformed body; the operator sees that nothing matched, and nothing changes."""
    before = statuses(db_session)
    body = {
        "failed_from": T0.isoformat(),
        "failed_until": (T0 + timedelta(hours=hours)).isoformat(),
    }
    for action in ("replay", "discard"):
        answer = client.post(f"{URL}/{action}", json=body, headers=ADMIN)
        assert answer.status_code == 200, answer.json
        assert (answer.json["matched"], answer.json["ids"]) == (0, [])
    assert statuses(db_session) == before


def test_an_offset_postgresql_does_not_take_is_read_as_the_same_instant_in_utc(
    client, db_session, letters
):
    """ISO 8601 allows offsets up to ±23:59, PostgreSQL only ±15:59 (schemathesis found
    the 500): the filter is the same instant in UTC."""
    body = {"failed_from": "1087-07-24T08:51:11-16:59", "dry_run": True}
    answer = client.post(f"{URL}/discard", json=body, headers=ADMIN)
    assert answer.status_code == 200, answer.json
    every = client.post(f"{URL}/discard", json={"all": True, "dry_run": True}, headers=ADMIN)
    assert answer.json["matched"] == every.json["matched"] > 0  # all later than 1087


def test_bulk_endpoints_need_the_token(client, db_session, letters):
    before = statuses(db_session)
    for action in ("replay", "discard"):
        assert client.post(f"{URL}/{action}", json={"all": True}).status_code == 401
        # The token comes before the body: a stranger learns nothing of its shape.
        assert client.post(f"{URL}/{action}", json={"nonsense": 1}).status_code == 401
    assert statuses(db_session) == before


def test_cli_dry_run_prints_the_count_and_a_sample(runner, db_session, letters):
    before = statuses(db_session)
    result = runner.invoke(
        args=["dead-letters", "discard", "--error-type", NO_TRAINER, "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "2 open dead letters match" in result.output
    assert f"  {letters['allocate_early']}  {ALLOCATE}" in result.output
    assert f"  {letters['allocate_late']}  {ALLOCATE}" in result.output
    assert "dry run: nothing discarded" in result.output
    assert statuses(db_session) == before


def test_cli_asks_before_acting_and_a_no_changes_nothing(runner, db_session, letters):
    before = statuses(db_session)
    result = runner.invoke(args=["dead-letters", "discard", "--all"], input="n\n")
    assert result.exit_code != 0
    assert "discard 3 dead letters? [y/N]" in result.output
    assert statuses(db_session) == before


def test_cli_discards_by_course_and_time_range_with_yes(runner, db_session, letters):
    result = runner.invoke(
        args=[
            "dead-letters",
            "discard",
            "--course",
            str(letters["course"]),
            "--from",
            "2026-11-20 09:00:00",
            "--until",
            "2026-11-20T11:00:00",
            "--yes",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "[y/N]" not in result.output
    assert "discarding 1 dead letters" in result.output
    assert "discarded 1, skipped 0" in result.output
    after = statuses(db_session)
    assert after[letters["allocate_early"]] == "discarded"
    assert after[letters["allocate_late"]] == after[letters["purchase"]] == "open"


def test_cli_needs_an_id_or_a_filter_not_both(runner, db_session, letters):
    assert runner.invoke(args=["dead-letters", "discard"]).exit_code == 2
    both = runner.invoke(args=["dead-letters", "discard", "1", "--task", ALLOCATE])
    assert both.exit_code == 2
    assert statuses(db_session)[letters["purchase"]] == "open"


def test_the_open_summary_counts_all_names_the_oldest_ten_and_their_age(db_session):
    from domain.dead_letters import open_letters

    assert open_letters(db_session).describe(T0) == "0 dead letters open"
    ids = [
        make_dead_letter(db_session, last_failed_at=T0 + timedelta(minutes=n)).id for n in range(12)
    ]
    make_dead_letter(db_session, status="replayed", last_failed_at=T0)
    summary = open_letters(db_session)
    assert (summary.count, summary.oldest_parked_at) == (12, T0)
    assert summary.describe(T0 + timedelta(minutes=7, seconds=59)) == (
        f"12 dead letters open, oldest 7 min: ids {', '.join(map(str, ids[:10]))}, …"
    )
