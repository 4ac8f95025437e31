"""As an operator would, in headless Chromium: the payment page shows a real worker's
chain as one thing — the steps in order with their durations and Flower links, the
trace, the retries and the dead letter with its reason — and its Replay and Discard
buttons really replay (the step runs) and discard. The token is asked for once and kept
out of every address."""

from __future__ import annotations

import re
import uuid

from sqlalchemy import func, select

from domain.payments import request_confirmation
from harness.otlp import otlp_receiver, tracing_env
from harness.processes import celery_worker, wait_until
from models import DeadLetter, StepRun, TutoringSession
from tests.conftest import open_session, settings
from tests.factories import make_course, make_payment, make_student, make_trainer
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, live_server  # noqa: F401 (a fixture)
from tests.test_browser import pytestmark as browser_marks

pytestmark = browser_marks  # a worker, and Debian's chromium (skipped without it)
CHAIN = ["verify_payment", "create_purchase", "allocate_trainer", "schedule_sessions"]
NO_TRAINER = "Reason: no trainer is free for this course and time yet"


def flower_task(task_id: str) -> str:
    return f"{settings.flower_public_url.rstrip('/')}/task/{task_id}"


def runs_of(payment_id: uuid.UUID) -> list[StepRun]:
    with open_session() as session:
        return list(
            session.scalars(
                select(StepRun)
                .where(StepRun.correlation_id == str(payment_id))
                .order_by(StepRun.id)
            )
        )


def letter_of(payment_id: uuid.UUID) -> DeadLetter | None:
    with open_session() as session:
        return session.scalars(
            select(DeadLetter).where(DeadLetter.correlation_id == str(payment_id))
        ).one_or_none()


def sessions_of(student_id: int) -> int:
    with open_session() as session:
        return session.scalar(select(func.count()).where(TutoringSession.student_id == student_id))


def test_the_payment_page_shows_the_chain_and_replays_and_discards_its_letters(
    live_server,  # noqa: F811 (the fixture imported above)
    tmp_path,
):
    from playwright.sync_api import expect, sync_playwright

    with open_session() as session, session.begin():
        served, unserved = make_course(session, title="Piano"), make_course(session)
        make_trainer(session, [served])
        fulfilled = make_payment(session, make_student(session), served)
        # No trainer teaches `unserved` yet: allocate_trainer retries, then is parked.
        to_replay = make_payment(session, replayed_student := make_student(session), unserved)
        to_discard = make_payment(session, make_student(session), unserved)
        payments = fulfilled.id, to_replay.id, to_discard.id
        replayed_student_id, unserved_id = replayed_student.id, unserved.id

    with (
        otlp_receiver(keep=False) as receiver,
        celery_worker(env=tracing_env(receiver)),  # the steps record their trace ids
        sync_playwright() as playwright,
    ):
        with open_session() as session, session.begin():  # published after the commit
            for payment_id in payments:
                request_confirmation(session, payment_id, student_id=None, source="test")
        wait_until(
            lambda: (
                len(runs_of(fulfilled.id)) == 4
                and letter_of(to_replay.id)
                and letter_of(to_discard.id)
            ),
            60,
            "the chains did not end",
        )
        runs = runs_of(fulfilled.id)
        [trace_id] = {run.trace_id for run in runs}  # one trace for the whole chain
        assert trace_id and re.fullmatch(r"[0-9a-f]{32}", trace_id)

        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page()
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))

        # Asked for the token once; a wrong one is refused and said so.
        page.goto(f"{live_server.url}/admin/payments/{fulfilled.id}")
        expect(page.locator("#signin")).to_be_visible()
        expect(page.locator("#content")).to_be_hidden()
        page.fill("#token", "not-the-admin-token")
        page.click("#signin button[type=submit]")
        expect(page.locator("#signin-error")).to_have_text(
            "That token was refused: it is not the admin token (401)."
        )
        page.fill("#token", settings.admin_token)
        page.click("#signin button[type=submit]")

        # The fulfilled chain: each step once, in order, done, with its duration and
        # its task in Flower; the trace that holds them.
        steps = page.locator("li.step")
        expect(steps).to_have_count(len(CHAIN))
        for item, name, run in zip(steps.all(), CHAIN, runs, strict=True):
            expect(item.locator(".name")).to_have_text(name)
            expect(item).to_have_class("step done")
            expect(item.locator(".duration")).to_have_text(re.compile(r"^\d+ ms$|^\d+\.\d s$"))
            expect(item.locator(".retries")).to_have_text("0 retries")
            if name != CHAIN[0]:  # from the step before it committed to its start
                expect(item.locator(".queued")).to_have_text(re.compile(r"^queued \d"))
            link = item.locator("a.flower-task")
            expect(link).to_have_attribute("href", flower_task(run.task_id))
            expect(link).to_have_text(f"task {run.task_id}")
        expect(page.locator("#trace")).to_have_text(trace_id)
        expect(page.locator("#state")).to_have_text("scheduled")
        page.screenshot(path=str(tmp_path / "payment-fulfilled.png"), full_page=True)

        # The parked one (the same tab keeps the token): five retries, the letter with
        # its reason and its task in Flower; the step after it never ran.
        letter = letter_of(to_replay.id)
        assert letter is not None
        page.goto(f"{live_server.url}/admin/payments/{to_replay.id}")
        allocate = page.locator("li.step[data-step=allocate_trainer]")
        expect(allocate).to_have_class("step dead_lettered")
        expect(allocate.locator(".retries")).to_have_text("5 retries")
        expect(allocate.locator(".step-letters")).to_have_text(f"dead letter {letter.id}")
        # Its failed task in Flower, from the step's row too.
        expect(allocate.locator("a.flower-task")).to_have_attribute(
            "href", flower_task(letter.task_id)
        )
        expect(page.locator("li.step[data-step=schedule_sessions]")).to_have_class("step not_run")
        shown = page.locator(f"li.letter[data-letter-id='{letter.id}']")
        expect(shown.locator(".letter-status")).to_have_text("open")
        expect(shown.locator(".reason")).to_have_text(NO_TRAINER)
        expect(shown.locator("a.flower-task")).to_have_attribute(
            "href", flower_task(letter.task_id)
        )
        page.screenshot(path=str(tmp_path / "payment-parked.png"), full_page=True)

        # The operator fixes the cause, then clicks Replay: the step runs, the chain ends.
        with open_session() as session, session.begin():
            make_trainer(session, [session.get_one(type(unserved), unserved_id)])
        shown.locator("button.replay").click()
        expect(shown.locator(".letter-status")).to_have_text("replayed")
        expect(shown.locator("button")).to_have_count(0)
        expect(allocate).to_have_class("step done", timeout=30_000)
        expect(page.locator("li.step[data-step=schedule_sessions]")).to_have_class(
            "step done", timeout=30_000
        )
        replayed = letter_of(to_replay.id)
        assert replayed is not None and replayed.status == "replayed"
        assert sessions_of(replayed_student_id) == 7
        # The run that committed is the replay's task (its letter's failed task beside it).
        expect(allocate.locator("a.flower-task").first).to_have_attribute(
            "href", flower_task(replayed.replay_task_id or "")
        )

        # Discard: the letter is closed, the step says so, nothing runs.
        discarded = letter_of(to_discard.id)
        assert discarded is not None
        page.goto(f"{live_server.url}/admin/payments/{to_discard.id}")
        other = page.locator(f"li.letter[data-letter-id='{discarded.id}']")
        other.locator("button.discard").click()
        expect(other.locator(".letter-status")).to_have_text("discarded")
        expect(page.locator("li.step[data-step=allocate_trainer]")).to_have_class("step discarded")
        assert (letter_of(to_discard.id) or discarded).status == "discarded"

        # An unknown payment says so.
        page.goto(f"{live_server.url}/admin/payments/{uuid.uuid4()}")
        expect(page.locator("#notice")).to_contain_text("There is no payment")

        assert page.evaluate("sessionStorage.getItem('tutorflow.adminToken')") == (
            settings.admin_token
        )
        assert requested and not [url for url in requested if settings.admin_token in url]
        browser.close()
