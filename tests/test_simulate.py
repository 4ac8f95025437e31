"""The simulator (scripts/simulate.py) as a developer runs it: its command, against the
real API under gunicorn and real workers (the provider queue's thread pool beside the
pipeline's prefork worker, as the Procfile runs them), with the settings of the run.
"""

from __future__ import annotations

import re
import time

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from harness.processes import ALL_BUT_PROVIDER, api_server, celery_worker, provider_worker
from models import Allocation, DeadLetter, Payment, TutoringSession
from scripts.simulate import Catalogue, Outcome, Report, Sale, classify, simulate_command
from tests.conftest import open_session

pytestmark = pytest.mark.worker


def row(output: str, name: str) -> str:
    found = re.search(rf"^{re.escape(name)}\s+(.*)$", output, re.MULTILINE)
    assert found, f"no {name!r} line in:\n{output}"
    return found.group(1)


def test_ten_students_choose_offered_times_and_every_payment_is_fulfilled(committed):
    started = time.monotonic()
    with (
        api_server({}) as api,
        celery_worker(queues=ALL_BUT_PROVIDER),
        provider_worker(),
    ):
        result = CliRunner().invoke(
            simulate_command,
            ["--payments", "10", "--api-url", api.base, "--timeout", "60"],
        )
    print(f"\n{result.output}simulate test: {time.monotonic() - started:.1f} s")
    assert result.exit_code == 0, result.output
    assert row(result.output, "sold (paid, confirmed)") == "10"
    assert row(result.output, "fulfilled") == "10 (70 sessions)"
    for name in ("not sold", "refunded", "failed", "dead-lettered", "unfinished after 60 s"):
        assert row(result.output, name) == "0", name
    assert "every payment fulfilled" in result.output

    with open_session() as session:
        assert session.scalar(select(func.count()).select_from(DeadLetter)) == 0
        assert session.scalar(select(func.count()).select_from(Payment)) == 10
        assert session.scalar(select(func.count()).select_from(Allocation)) == 10
        assert session.scalar(select(func.count()).select_from(TutoringSession)) == 70
        # The students chose among the offered times: not all at one.
        slots = session.scalars(select(Payment.time_slot)).all()
        assert len(set(slots)) > 1


def detail(status: str, state: str, letters: list[dict], events: tuple[str, ...] = ()) -> dict:
    return {
        "status": status,
        "failure_reason": None,
        "fulfilment": {"state": state, "sessions_scheduled": 0, "dead_letters": letters},
        "timeline": [{"type": t} for t in events],
    }


def test_an_open_dead_letter_is_dead_lettered_whatever_the_state_says():
    """The old summary's bug: a payment parked for want of a trainer shows the state
    `finding_trainer` (the student waits), and was counted unfinished, not dead-lettered."""
    letter = {
        "task_name": "tutorflow.pipeline.allocate_trainer",
        "status": "open",
        "reason": "No trainer is free at this time.",
    }
    parked = classify(detail("succeeded", "finding_trainer", [letter]))
    assert parked is not None and parked.kind == "dead_lettered"
    assert "allocate_trainer" in parked.detail
    replayed = {**letter, "status": "replayed"}
    assert classify(detail("succeeded", "allocated", [replayed])) is None  # under way
    refunded = classify(detail("refunded", "refunded", [], ("ALLOCATION_REFUSED",)))
    assert refunded is not None and (refunded.kind, refunded.detail) == (
        "refunded",
        "ALLOCATION_REFUSED",
    )


def test_anything_but_fulfilment_is_wrong():
    report = Report(2, Catalogue(1, {"UTC": 1}), timeout=60)
    report.sales = [Sale("a", "UTC", 10, "09:00", 1), Sale("b", "UTC", 10, "10:00", 1)]
    report.outcomes = {"a": Outcome("fulfilled", "scheduled", 7)}
    for kind in ("refunded", "failed", "dead_lettered", "unfinished"):
        report.outcomes["b"] = Outcome(kind, "x", 0, "why")
        assert report.exit_status == 1 and report.problems() == [
            f"1 {kind.replace('_', '-')}: why: 1"
        ]
    report.outcomes["b"] = Outcome("fulfilled", "scheduled", 7)
    assert report.exit_status == 0 and report.problems() == []
