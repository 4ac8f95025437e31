"""As an operator would: in headless Chromium, Flower's pages name the open dead
letter — its id (what replay needs) and why it failed — after a real worker parked it."""

from __future__ import annotations

import re

from domain.payments import request_confirmation
from harness.processes import FLOWER_AUTH, celery_worker, flower, wait_until
from tests.conftest import open_session
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.test_browser import pytestmark as browser_marks
from tests.test_dead_letters import open_letters, seed_payment_without_trainer

pytestmark = browser_marks  # a worker, and Debian's chromium (skipped without it)


def test_flower_pages_name_the_open_dead_letter_and_its_reason(committed, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    payment_id, _ = seed_payment_without_trainer()
    with flower() as base, celery_worker(), sync_playwright() as playwright:
        with open_session() as session, session.begin():  # published after the commit
            request_confirmation(session, payment_id, student_id=None, source="test")
        wait_until(open_letters, 60, "no dead letter was recorded")
        [letter] = open_letters()

        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        context = browser.new_context(
            http_credentials={"username": FLOWER_AUTH[0], "password": FLOWER_AUTH[1]}
        )
        page = context.new_page()
        # The Tasks page, searched the way an operator would: by the payment id.
        page.goto(f"{base}/tasks")
        page.get_by_role("searchbox").fill(str(payment_id))
        record_row = page.locator("#tasks-table tbody tr", has_text="dead_letters.record")
        expect(record_row).to_have_count(1, timeout=30_000)
        expect(record_row).to_contain_text("SUCCESS")
        page.screenshot(path=str(tmp_path / "flower-tasks.png"))

        # Its own page: the result names the letter and the failure; the arguments
        # are whole (a short summary, not a cut-off dump).
        record_row.locator("a[href*='/task/']").first.click()
        result = page.locator("dt", has_text="Result").locator("xpath=following-sibling::dd")
        expect(result).to_contain_text("dead letter ")
        text = result.inner_text()
        found = re.search(
            r"dead letter (\d+): (\S+) failed for payment (\S+) — (.+?)\. (\d+) dead letters? open",
            text,
        )
        assert found is not None, text
        assert int(found[1]) == letter.id
        assert found[2] == "tutorflow.pipeline.allocate_trainer" == letter.task_name
        assert found[3] == str(payment_id)
        assert found[4] == f"{letter.exception_type}: {letter.exception_message}"
        assert found[4].startswith("domain.errors.NoTrainerAvailable: no trainer free")
        assert found[5] == "1"  # open now
        kwargs = page.locator("dt", has_text="Keyword arguments").locator(
            "xpath=following-sibling::dd"
        )
        expect(kwargs).to_contain_text(letter.task_id)
        assert kwargs.inner_text().strip().endswith("}")
        page.screenshot(path=str(tmp_path / "flower-task.png"))
        browser.close()
