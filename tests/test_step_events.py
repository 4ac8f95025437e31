"""Which task events a pipeline step sends to Flower (CELERY_STEP_EVENTS), with a real
worker and a real Flower: "all" shows every step of every payment; "outcomes" shows the
steps that retried or failed, named, and leaves out each routine success."""

from __future__ import annotations

import pytest
import requests

from domain.payments import request_confirmation
from harness.processes import FLOWER_AUTH as AUTH
from harness.processes import celery_worker, flower, wait_until
from tests.conftest import open_session
from tests.test_dead_letters import open_letters, seed_payment_without_trainer

pytestmark = pytest.mark.worker
RECORD = "tutorflow.dead_letters.record"


def flower_tasks(base: str) -> list[dict]:
    tasks = requests.get(f"{base}/api/tasks", auth=AUTH, timeout=5).json()
    return list(tasks.values())


@pytest.mark.parametrize("events", ["all", "outcomes"])
def test_flower_shows_the_steps_the_setting_asks_for(committed, events):
    # No trainer: verify and create succeed, allocate retries 5 times, then the dead
    # letter is recorded (its record task always sends all its events).
    payment_id, _ = seed_payment_without_trainer()
    env = {"CELERY_STEP_EVENTS": events}
    with flower(env) as base, celery_worker(env=env):
        with open_session() as session, session.begin():  # published after commit
            request_confirmation(session, payment_id, student_id=None, source="test")
        wait_until(open_letters, 60, "no dead letter was recorded")
        # The record's events come after every step's: once Flower has it, it has all.
        wait_until(
            lambda: any(
                t.get("name") == RECORD and t["state"] == "FAILURE" for t in flower_tasks(base)
            ),
            30,
            "Flower never showed the dead letter's record task",
        )
        seen = {(t.get("name"), t["state"]) for t in flower_tasks(base)}
    allocate = "tutorflow.pipeline.allocate_trainer"
    assert (allocate, "FAILURE") in seen  # named, with its last state
    routine = {
        ("tutorflow.pipeline.verify_payment", "SUCCESS"),
        ("tutorflow.pipeline.create_purchase", "SUCCESS"),
    }
    if events == "all":
        assert routine <= seen
    else:
        assert not routine & seen
        assert all(name is not None for name, _ in seen)  # no nameless task in Flower


def test_with_outcomes_a_step_that_retried_and_then_succeeded_is_closed_in_flower(committed):
    """Its retry shows, and so does the retry's success: otherwise Flower would show
    the step as retrying forever."""
    from tests.worker_tasks import flaky_step

    env = {"CELERY_STEP_EVENTS": "outcomes"}
    with (
        flower(env) as base,
        celery_worker(queues="pipeline", include=("tests.worker_tasks",), env=env),
    ):
        task_id = flaky_step.apply_async(kwargs={"correlation_id": "flaky"}).id

        def shown() -> dict | None:
            task = requests.get(f"{base}/api/task/info/{task_id}", auth=AUTH, timeout=5)
            return task.json() if task.ok else None

        wait_until(lambda: (shown() or {}).get("state") == "SUCCESS", 30, "Flower never closed it")
        task = shown() or {}
    assert task["name"] == "tests.worker_tasks.flaky_step"
    assert task["retries"] == 1
