"""As a person would, in headless Chromium: /docs with no network at all, and the
student page's words."""

from __future__ import annotations

import errno
import re
import shutil
from datetime import UTC, datetime, time
from pathlib import Path

import pytest
from sqlalchemy import select

from harness.offline import can_make_namespaces, loopback_namespace, serve_in
from models import TutoringSession
from tests.conftest import _make_app, open_session, student_auth
from tests.factories import make_allocation, make_course, make_trainer
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, live_server  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)",
)


@pytest.fixture(scope="module")
def playwright():
    """One Playwright per module: two sync instances cannot run side by side."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as instance:
        yield instance


@pytest.fixture(scope="module")
def browser(playwright):
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
    )
    try:
        yield browser
    finally:
        browser.close()


@pytest.mark.skipif(not can_make_namespaces(), reason="needs root and iproute2 (ip netns)")
def test_docs_list_the_operations_with_the_network_unreachable(playwright, tmp_path: Path):
    """The API and Chromium both inside a network namespace that has only loopback: a
    page that needed a CDN would stay blank. The app needs no database for /docs."""
    from playwright.sync_api import expect

    app = _make_app()
    operations = [
        (method.upper(), path)
        for path, item in app.test_client().get("/openapi.json").get_json()["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    ]
    with loopback_namespace() as namespace, serve_in(namespace, app) as server:
        assert server.outside_errno == errno.ENETUNREACH  # no route out, not even a try
        # Chromium joins the namespace: Playwright talks to it over pipes, not the network.
        wrapper = tmp_path / "chromium-offline"
        wrapper.write_text(f'#!/bin/sh\nexec {" ".join(namespace.command([CHROMIUM]))} "$@"\n')
        wrapper.chmod(0o755)
        offline = playwright.chromium.launch(
            executable_path=str(wrapper), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = offline.new_page()
            requested: list[str] = []
            failed: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.goto(f"{server.url}/docs")
            blocks = page.locator(".opblock")
            expect(blocks).to_have_count(len(operations), timeout=20_000)
            shown = {
                (
                    block.locator(".opblock-summary-method").inner_text().strip(),
                    block.locator(".opblock-summary-path").get_attribute("data-path"),
                )
                for block in blocks.all()
            }
            assert shown == set(operations)
            page.screenshot(path=str(tmp_path / "docs-offline.png"))
        finally:
            offline.close()  # before its namespace goes
    assert failed == []
    assert requested and all(url.startswith(server.url) for url in requested), requested


def test_student_page_shows_weekdays_times_in_the_students_zone_and_the_next_session(
    live_server,  # noqa: F811 (the fixture imported above)
    browser,
    tmp_path,
):
    from playwright.sync_api import expect

    with open_session() as session, session.begin():
        course = make_course(session, title="Piano")
        make_trainer(session, [course])
        # The domain's own scheduling: 7 weekday sessions at 10:00 in New York.
        allocation = make_allocation(
            session,
            course,
            slot=time(10, 0),
            now=datetime.now(UTC),
            timezone="America/New_York",
            tier=10,
        )
        student_id = allocation.student_id
        dates = session.scalars(
            select(TutoringSession.scheduled_date)
            .where(TutoringSession.allocation_id == allocation.id)
            .order_by(TutoringSession.starts_at)
        ).all()

    page = browser.new_page(timezone_id="Asia/Tokyo")  # the browser's zone is not the student's
    token = student_auth(student_id)["Authorization"].removeprefix("Bearer ")
    page.goto(f"{live_server.url}/students/{student_id}#token={token}")
    sessions = page.locator("li.session")
    expect(sessions).to_have_count(len(dates))
    expect(page.locator("#zone")).to_have_text("Times are in your time zone, America/New_York.")
    expect(sessions.first).to_have_class("session next")
    expect(sessions.first.locator(".badge")).to_have_text("Next")
    expect(page.locator("li.session.next")).to_have_count(1)
    for item, day in zip(sessions.all(), dates, strict=True):
        # "Monday 30 November, 10:00 GMT-5": weekday, the student's time, the zone.
        expect(item.locator(".when")).to_have_text(
            re.compile(rf"^{day:%A},? {day.day} {day:%B}, 10:00 (EST|EDT|GMT-[45])$")
        )
    expect(sessions.first).to_contain_text("Piano with")
    expect(page.locator("#courses")).to_contain_text("Piano: 0 of 10 sessions done, in progress")
    page.screenshot(path=str(tmp_path / "student-page.png"))
    page.close()


def test_student_page_says_when_there_is_no_such_student_or_no_token(
    live_server,  # noqa: F811 (the fixture imported above)
    browser,
):
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(
        f"{live_server.url}/students/424242#token={student_auth(424242)['Authorization'][7:]}"
    )
    expect(page.locator("#notice")).to_have_text(
        "There is no student 424242. Check the link you were given, "
        "or ask your school for the right one."
    )
    expect(page.locator("#content")).to_be_hidden()

    fresh = browser.new_page()  # a new tab: no token kept
    fresh.goto(f"{live_server.url}/students/1")
    expect(fresh.locator("#signin")).to_be_visible()
    expect(fresh.locator("#signin-why")).to_contain_text("Sign in to see your sessions")
    expect(fresh.locator("#content")).to_be_hidden()  # no "Loading…" under the form
    page.close()
    fresh.close()
