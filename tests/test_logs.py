"""Logs: card numbers and e-mail addresses never printed, wherever they hide; ISO 8601
UTC timestamps; one line per request."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from core.logs import configure_logging


@pytest.fixture
def json_lines():
    """The real JSON handler, writing to a buffer; the root logger restored after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buffer = io.StringIO()
    configure_logging("INFO", json_lines=True, stream=buffer)
    try:
        yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_cards_and_emails_are_masked_in_arguments_and_extra_fields(json_lines):
    log = logging.getLogger("tutorflow.test")
    log.info("card %s for %s", "4111 1111 1111 1111", "alice@example.com")
    log.warning(
        "payment",
        extra={"payer": "bob.smith@example.org", "detail": {"cards": ["4242424242424242"]}},
    )
    printed = json.dumps(json_lines())
    assert "4111 1111 1111 1111" not in printed and "4242424242424242" not in printed
    assert "alice@example.com" not in printed and "bob.smith@example.org" not in printed
    first, second = json_lines()
    assert first["message"] == "card ****1111 for a***@example.com"
    assert second["payer"] == "b***@example.org"
    assert second["detail"] == {"cards": ["****4242"]}


def test_timestamps_are_iso_8601_utc(json_lines):
    logging.getLogger("tutorflow.test").info("hello")
    [line] = json_lines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"]), line["ts"]


def test_every_request_logs_one_line_with_its_id_status_and_duration(client, caplog):
    caplog.set_level(logging.INFO, logger="tutorflow.requests")
    client.get("/healthz", headers={"X-Request-ID": "req-123"})
    [line] = [r for r in caplog.records if r.name == "tutorflow.requests"]
    assert (line.method, line.path, line.status) == ("GET", "/healthz", 200)
    assert line.duration_ms >= 0
    assert line.request_id == "req-123"
