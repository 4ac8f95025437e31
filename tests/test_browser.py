"""As a person would: the student page in headless Chromium shows a new purchase's
sessions by itself — no reload — once the payment is confirmed over HTTP."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from flask import Flask

from harness.processes import celery_worker
from harness.serving import ThreadedServer
from tests.conftest import ADMIN, open_session, student_auth
from tests.factories import make_course, make_payment, make_student, make_trainer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.worker,
    pytest.mark.skipif(
        shutil.which("chromium") is None,
        reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)",
    ),
]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class LiveServer:
    url: str
    app: Flask


@pytest.fixture
def live_server(live_app) -> Iterator[LiveServer]:
    with ThreadedServer(live_app) as server:
        yield LiveServer(server.base, live_app)


@pytest.mark.parametrize("live_mode", ["stream", "polling"])
def test_sessions_appear_on_the_open_page_without_a_reload(
    live_server, tmp_path, monkeypatch, live_mode
):
    from playwright.sync_api import expect, sync_playwright

    if live_mode == "polling":  # every stream slot taken: the page must fall back to polling
        runtime = live_server.app.extensions["tutorflow"]
        monkeypatch.setattr(runtime, "stream_slots", threading.BoundedSemaphore(1))
        runtime.stream_slots.acquire()

    with open_session() as session, session.begin():
        student, course = make_student(session), make_course(session, title="Piano")
        make_trainer(session, [course])
        payment = make_payment(session, student, course)
        student_id, payment_id = student.id, payment.id

    with celery_worker(), sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page()
        token = student_auth(student_id)["Authorization"].removeprefix("Bearer ")
        page.goto(f"{live_server.url}/students/{student_id}#token={token}")
        expect(page.locator("#sessions")).to_contain_text("No sessions yet.")
        expect(page.locator("#mode")).to_have_text(live_mode)

        confirmed = requests.post(
            f"{live_server.url}/api/v1/payments/{payment_id}/confirm",
            json={},
            headers=ADMIN,
            timeout=10,
        )
        assert confirmed.status_code == 202

        expect(page.locator("li.session")).to_have_count(7, timeout=15_000)
        expect(page.locator("li.session").first).to_contain_text("Piano")
        assert page.evaluate("window.tutorflowPageLoads") == 1  # the same page, never reloaded
        page.screenshot(path=str(tmp_path / f"student-page-{live_mode}.png"))
        browser.close()
