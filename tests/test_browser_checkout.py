"""As a student would: on their page, pick a course, see the times offered in their zone,
hold one, pay with the sandbox's test cards from the browser as Stripe.js would (a
declined card shown as declined, then one that pays), and watch the sessions appear."""

from __future__ import annotations

import shutil

import pytest
from sqlalchemy import select

from domain.calendar import DEFAULT_WORKING_DAYS
from harness.processes import celery_worker, provider_worker
from models import Hold, Payment
from tests.conftest import open_session, student_auth
from tests.factories import make_course, make_student, make_trainer
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, live_server

pytestmark = [
    pytest.mark.worker,
    pytest.mark.skipif(
        shutil.which("chromium") is None,
        reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)",
    ),
]
__all__ = ["live_server"]  # the fixture, shared with the other browser test


def test_a_student_books_a_course_on_their_page_a_declined_card_first(live_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with open_session() as session, session.begin():
        student = make_student(session, timezone="America/New_York")
        course = make_course(session, title="Piano")
        make_trainer(
            session, [course], timezone="Europe/Berlin", working_hours=DEFAULT_WORKING_DAYS
        )
        student_id = student.id

    with celery_worker(), provider_worker(), sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page()
        token = student_auth(student_id)["Authorization"].removeprefix("Bearer ")
        page.goto(f"{live_server.url}/students/{student_id}#token={token}")
        expect(page.locator("#course option")).to_have_text(["Piano"])
        # Offered in New York time: 08:00-20:00 Berlin is 02:00-14:00 there (13:00 the
        # last hour that ends inside it); 17:30 would be 23:30 in Berlin.
        times = page.locator("#time option")
        expect(times.first).to_have_attribute("value", "02:00")
        offered = times.evaluate_all("options => options.map(o => o.value)")
        assert "13:00" in offered and "17:30" not in offered and "13:15" not in offered
        page.select_option("#time", "09:00")
        page.click("#reserve")
        expect(page.locator("#payment")).to_be_visible()
        expect(page.locator("#price")).to_have_text("99.00 EUR")

        page.select_option("#card", "pm_card_chargeDeclined")
        page.click("#pay")
        expect(page.locator("#checkout-message")).to_contain_text("Declined")
        expect(page.locator("#checkout-message")).to_have_class("declined")
        page.screenshot(path=str(tmp_path / "checkout-declined.png"))
        with open_session() as session:
            assert session.scalars(select(Payment.status)).one() == "pending"

        page.select_option("#card", "pm_card_visa")
        page.click("#pay")
        expect(page.locator("#checkout-message")).to_contain_text("Paid.")
        expect(page.locator("li.session")).to_have_count(7, timeout=20_000)
        expect(page.locator("li.session").first).to_contain_text("Piano")
        expect(page.locator("#courses")).to_contain_text("Piano: 0 of 10 sessions done")
        assert page.evaluate("window.tutorflowPageLoads") == 1  # never reloaded
        page.screenshot(path=str(tmp_path / "checkout-booked.png"))
        browser.close()

    with open_session() as session:
        assert session.scalars(select(Payment.status)).one() == "succeeded"
        assert session.scalars(select(Hold.status)).one() == "converted"
