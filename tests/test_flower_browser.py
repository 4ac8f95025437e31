"""As an operator would: in headless Chromium, with letters open that real workers
parked, Flower's pages say how many are open (the Broker page's dead_letter queue),
show each as a red failure that names its letter id and why, and are not buried under
beat's housekeeping runs."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.payments import request_confirmation
from harness.processes import FLOWER_AUTH, celery_worker, flower, wait_until
from models import OutboxMessage
from tests.conftest import celery_app, open_session
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.test_browser import pytestmark as browser_marks
from tests.test_dead_letters import open_letters, seed_payment_without_trainer

pytestmark = browser_marks  # a worker, and Debian's chromium (skipped without it)

# Beat's outbox relay every second: the housekeeping run an operator must not drown in.
BEAT = {"OUTBOX_RELAY_INTERVAL_SECONDS": "1", "OUTBOX_RELAY_GRACE_SECONDS": "0"}


def red(element) -> bool:
    """The element's background is a red (Bootstrap's danger: rgb(220, 53, 69))."""
    r, g, b = map(
        int, re.findall(r"\d+", element.evaluate("e => getComputedStyle(e).backgroundColor"))[:3]
    )
    return r > 150 and g < 100 and b < 100


def test_flower_shows_the_open_letters_red_counted_and_not_buried(committed, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    payments = [seed_payment_without_trainer()[0] for _ in range(2)]
    with flower() as base, celery_worker(env=BEAT, beat=True), sync_playwright() as playwright:
        # Committed, never published (a plain Session has no after-commit channel): only
        # beat's relay can start these chains, so it has run by the time a letter exists.
        with Session(celery_app.database.engine) as session, session.begin():
            for payment_id in payments:
                request_confirmation(session, payment_id, student_id=None, source="test")
        wait_until(lambda: len(open_letters()) == 2, 90, "two dead letters were not recorded")
        letters = {letter.correlation_id: letter for letter in open_letters()}
        with open_session() as session:
            assert all(m.published_at for m in session.scalars(select(OutboxMessage)))

        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        context = browser.new_context(
            viewport={"width": 1280, "height": 900},
            http_credentials={"username": FLOWER_AUTH[0], "password": FLOWER_AUTH[1]},
        )
        page = context.new_page()

        # The Tasks page's Failed filter: each letter a red FAILURE naming its id and why.
        page.goto(f"{base}/tasks")
        page.get_by_role("button", name="Failed").click()
        rows = page.locator("#tasks-table tbody tr", has_text="DeadLetterOpen")
        expect(rows).to_have_count(2, timeout=30_000)
        shown = {}
        for row in rows.all():
            badge = row.locator(".badge")
            expect(badge).to_have_text("FAILURE")
            assert red(badge)
            text = row.inner_text()
            found = re.search(r"dead letter (\d+): (.+?) — (\S+) for payment ([\w-]+)\. ", text)
            assert found is not None, text
            shown[found[4]] = (int(found[1]), found[2], found[3])
            # At a glance: the letter id and why end inside the table's visible part, not
            # past its right edge (the table scrolls sideways).
            reason_ends, visible_ends = row.locator("td", has_text="DeadLetterOpen").evaluate(
                "td => { const text = document.createRange(); text.selectNodeContents(td);"
                " text.setEnd(td.firstChild, td.textContent.indexOf(' — '));"
                " const view = td.closest('.dataTables_scrollBody') || td.closest('table');"
                " return [text.getBoundingClientRect().right,"
                " Math.min(view.getBoundingClientRect().right, window.innerWidth)]; }"
            )
            assert reason_ends <= visible_ends, (reason_ends, visible_ends)
        assert shown == {
            letter.correlation_id: (
                letter.id,
                f"{letter.exception_type.rsplit('.', 1)[-1]}: {letter.exception_message}",
                "allocate_trainer",
            )
            for letter in letters.values()
        }
        page.screenshot(path=str(tmp_path / "flower-failed.png"))

        # Beat's relay ran (it published both confirmations), yet no beat job is listed.
        page.get_by_role("button", name="All").click()
        page.get_by_role("searchbox").fill("tutorflow.beat")
        expect(page.locator("#tasks-table tbody")).to_contain_text(
            "No tasks match your search", timeout=30_000
        )

        # The Broker page counts the open letters in the dead_letter queue.
        page.goto(f"{base}/broker")
        parked = page.locator("#queue-table tr#dead_letter td")
        expect(parked.nth(0)).to_have_text("dead_letter")
        expect(parked.nth(1)).to_have_text("2")
        page.screenshot(path=str(tmp_path / "flower-broker.png"))

        # A letter's own page: the whole reason, and the letter's arguments whole (a short
        # summary, not a cut-off dump).
        first = letters[str(payments[0])]
        page.goto(f"{base}/tasks")
        page.get_by_role("searchbox").fill(str(payments[0]))
        row = page.locator("#tasks-table tbody tr", has_text="DeadLetterOpen")
        expect(row).to_have_count(1, timeout=30_000)
        row.locator("a[href*='/task/']").first.click()
        expect(page.locator("body")).to_contain_text(f"dead letter {first.id}: ")
        kwargs = page.locator("dt", has_text="Keyword arguments").locator(
            "xpath=following-sibling::dd"
        )
        expect(kwargs).to_contain_text(first.task_id)
        assert kwargs.inner_text().strip().endswith("}")
        page.screenshot(path=str(tmp_path / "flower-task.png"))
        browser.close()
