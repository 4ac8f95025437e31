"""Operator actions on dead letters: admin API and CLI (logic; delivery: test_dead_letters)."""

from __future__ import annotations

from sqlalchemy import func, select

from models import DeadLetter, OutboxMessage
from tests.conftest import ADMIN, celery_app
from tests.factories import make_dead_letter

URL = "/api/v1/admin/dead-letters"


def test_admin_endpoints_need_the_token(client, db_session):
    letter = make_dead_letter(db_session)
    assert client.get(URL).status_code == 401
    assert client.post(f"{URL}/{letter.id}/replay").status_code == 401
    assert client.post(f"{URL}/{letter.id}/discard").status_code == 401
    db_session.refresh(letter)
    assert letter.status == "open"


def test_list_filters_and_paginates(client, db_session):
    first = make_dead_letter(db_session)
    make_dead_letter(db_session, step="tutorflow.pipeline.allocate_trainer")
    make_dead_letter(db_session, status="discarded")
    page = client.get(f"{URL}?status=open&per_page=1", headers=ADMIN).json
    assert page["total"] == 2
    assert len(page["items"]) == 1
    assert page["items"][0]["status"] == "open"
    by_task = client.get(f"{URL}?task_name=tutorflow.pipeline.allocate_trainer", headers=ADMIN)
    assert [i["task_name"] for i in by_task.json["items"]] == [
        "tutorflow.pipeline.allocate_trainer"
    ]
    by_payment = client.get(f"{URL}?correlation_id={first.correlation_id}", headers=ADMIN).json
    assert [i["id"] for i in by_payment["items"]] == [first.id]
    shown = client.get(f"{URL}/{first.id}", headers=ADMIN).json
    assert shown["traceback"] == "Traceback ..."
    assert shown["args"] == [first.correlation_id]  # the call its replay makes again
    assert shown["kwargs"] == {"correlation_id": first.correlation_id}
    assert shown["chain"] == []


def test_pagination_is_capped(client, db_connection):
    response = client.get(f"{URL}?per_page=101", headers=ADMIN)
    assert response.status_code == 422
    assert client.get(f"{URL}?page=0", headers=ADMIN).status_code == 422


def test_discard_twice_is_a_conflict_and_changes_nothing(client, db_session):
    letter = make_dead_letter(db_session)
    first = client.post(f"{URL}/{letter.id}/discard", headers=ADMIN)
    assert first.status_code == 200
    assert first.json["status"] == "discarded"
    again = client.post(f"{URL}/{letter.id}/discard", headers=ADMIN)
    assert again.status_code == 409
    assert again.json["error"]["code"] == "dead_letter_not_open"
    replay = client.post(f"{URL}/{letter.id}/replay", headers=ADMIN)
    assert replay.status_code == 409
    # The first discard's only message: take the letter out of the dead_letter queue.
    assert outbox_kinds(db_session) == ["settle_dead_letters"]


def outbox_kinds(db_session) -> list[str]:
    return list(db_session.scalars(select(OutboxMessage.kind).order_by(OutboxMessage.id)))


def test_replay_goes_through_the_outbox_and_twice_is_a_conflict(client, db_session, eager):
    # The replayed task fails again in-process; let it fail the way a worker would.
    celery_app.conf.task_eager_propagates = False  # the eager fixture resets it
    letter = make_dead_letter(db_session)
    replay = client.post(f"{URL}/{letter.id}/replay", headers=ADMIN)
    assert replay.status_code == 200
    assert replay.json["status"] == "replayed"
    message, settle = db_session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
    assert message.kind == "replay_dead_letter"
    assert settle.kind == "settle_dead_letters"  # its message leaves the dead_letter queue
    assert message.payload["redelivery"] == letter.redelivery  # as the workers wrote it
    assert message.payload["run_id"] == replay.json["replay_task_id"]
    assert message.published_at is not None
    # The replayed task failed again (its payment still does not exist): a new letter.
    assert db_session.scalar(select(func.count()).select_from(DeadLetter)) == 2
    again = client.post(f"{URL}/{letter.id}/replay", headers=ADMIN)
    assert again.status_code == 409
    assert outbox_kinds(db_session) == ["replay_dead_letter", "settle_dead_letters"]


def test_unknown_letter_is_404(client, db_connection):
    for method, path in (("get", ""), ("post", "/replay"), ("post", "/discard")):
        response = getattr(client, method)(f"{URL}/424242{path}", headers=ADMIN)
        assert response.status_code == 404
        assert response.json["error"]["code"] == "dead_letter_not_found"


def test_cli_lists_shows_discards(runner, db_session):
    letter = make_dead_letter(db_session)
    listed = runner.invoke(args=["dead-letters", "list", "--status", "open"])
    assert listed.exit_code == 0, listed.output
    assert "tutorflow.pipeline.create_purchase" in listed.output
    assert "1 of 1 shown" in listed.output
    shown = runner.invoke(args=["dead-letters", "show", str(letter.id)])
    assert letter.task_id in shown.output
    assert runner.invoke(args=["dead-letters", "discard", str(letter.id)]).exit_code == 0
    again = runner.invoke(args=["dead-letters", "discard", str(letter.id)])
    assert again.exit_code != 0
    assert "dead_letter_not_open" in again.output


def test_cli_replay_all_with_a_filter_and_a_progress_bar(runner, db_session, eager):
    celery_app.conf.task_eager_propagates = False  # the eager fixture resets it
    for _ in range(3):
        make_dead_letter(db_session)
    other = make_dead_letter(db_session, step="tutorflow.pipeline.allocate_trainer")
    result = runner.invoke(
        args=["dead-letters", "replay", "--all", "--task", "tutorflow.pipeline.create_purchase"],
        input="y\n",
    )
    assert result.exit_code == 0, result.output
    assert "replay 3 dead letters? [y/N]" in result.output
    assert "replaying 3 dead letters" in result.output
    assert "replayed 3, skipped 0" in result.output
    db_session.refresh(other)
    assert other.status == "open"
    assert runner.invoke(args=["dead-letters", "replay"]).exit_code != 0
