"""The development mail sink (`python -m sandbox.mail`, the Procfile's `mailsink`) prints
each mail as a person reads it: one block with From, To, Subject and Message-ID, then
the text body decoded — not the quoted-printable or base64 of the wire."""

from __future__ import annotations

import base64
import os
import queue
import subprocess
import sys
import threading
import time
from email.message import EmailMessage
from pathlib import Path

from core.mail import Mail, Mailer, SmtpServer
from harness.processes import free_port
from sandbox.mail import render

ROOT = Path(__file__).resolve().parent.parent

BODY = (
    "Hello Zoë,\n\n"
    "Your Mathématiques sessions are booked:\n"
    "  Tuesday 24 November 2026, 17:00 (Europe/Berlin) — the first of ten, and a line long"
    " enough that quoted-printable would break it with a soft line break.\n"
)


def test_the_sink_prints_each_mail_decoded():
    port = free_port()
    sink = subprocess.Popen(
        [sys.executable, "-m", "sandbox.mail", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
    )
    lines: queue.Queue[str] = queue.Queue()
    assert sink.stdout is not None
    stdout = sink.stdout
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()

    def read_until(marker: str, timeout: float = 15) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            seen.append(line.rstrip("\n"))
            if marker in line:
                return seen
        raise AssertionError(f"no {marker!r} from the sink; it printed {seen}")

    try:
        assert f"mail sink ready: smtp://127.0.0.1:{port} " in read_until("mail sink ready:")[-1]
        mailer = Mailer(
            SmtpServer.from_url(f"smtp://127.0.0.1:{port}"),
            sender="Tutorflow <no-reply@tutorflow.local>",
            timeout=5,
        )
        mail = Mail(
            recipient="Zoë Example <zoe@example.com>",
            subject="Your Mathématiques sessions are booked",
            body=BODY,
            message_id="<n-1@tutorflow.local>",
        )
        wire = mailer.message(mail).as_string()
        assert "quoted-printable" in wire and "Zo=C3=AB" in wire  # what used to be printed
        mailer.send(mail)
        block = read_until("end of mail")
    finally:
        sink.terminate()
        sink.wait(timeout=10)

    start = next(i for i, line in enumerate(block) if line.endswith(" mail"))
    assert block[start + 1 : start + 6] == [
        "From: Tutorflow <no-reply@tutorflow.local>",
        "To: Zoë Example <zoe@example.com>",
        "Subject: Your Mathématiques sessions are booked",
        "Message-ID: <n-1@tutorflow.local>",
        "",
    ]
    assert "\n".join(block[start + 6 : -1]) == BODY.rstrip("\n")
    assert not any("=C3" in line or "=E2" in line or line.endswith("=") for line in block)


def test_base64_and_another_charset_are_decoded_too():
    message = EmailMessage()
    message["From"] = "a@example.com"
    message["To"] = "b@example.com"
    message["Subject"] = "Grüße"
    message.set_content("Grüße aus Köln\n", charset="iso-8859-1", cte="base64")
    raw = message.as_bytes()
    assert base64.b64encode("Grüße aus Köln\n".encode("iso-8859-1")) in raw
    printed = render(raw, "a@example.com", ["b@example.com"]).splitlines()
    assert printed[1:5] == ["From: a@example.com", "To: b@example.com", "Subject: Grüße", ""]
    assert printed[5] == "Grüße aus Köln"


def test_a_mail_without_a_text_part_says_what_it_has():
    message = EmailMessage()
    message["Subject"] = "only html"
    message.set_content("<p>hi</p>", subtype="html")
    printed = render(message.as_bytes(), "a@example.com", ["b@example.com"]).splitlines()
    assert "From: a@example.com" in printed and "To: b@example.com" in printed  # the envelope's
    assert "(no text part: text/html)" in printed


def test_a_long_subject_in_encoded_words_is_printed_whole():
    subject = "New student for Mathématiques et Géométrie avancées: Zoë Élodie Müller-Søndergaard"
    mailer = Mailer(SmtpServer.from_url("smtp://127.0.0.1:1"), sender="t@example.com", timeout=1)
    raw = mailer.message(Mail("b@example.com", subject, "x\n", "<n-2@example.com>")).as_bytes()
    assert b"?=\n =?utf-8?" in raw  # folded over several encoded words
    assert render(raw).splitlines()[3] == f"Subject: {subject}"


def test_the_text_part_is_found_as_a_mail_client_would():
    alternative = EmailMessage()
    alternative.set_content("<p>hi</p>", subtype="html")
    alternative.add_alternative("the plain text\n")
    assert render(alternative.as_bytes()).splitlines()[2] == "the plain text"

    attached = EmailMessage()
    attached.set_content("<p>hi</p>", subtype="html")
    attached.add_attachment("an attached text file\n", filename="notes.txt")
    printed = render(attached.as_bytes()).splitlines()
    assert "(no text part: text/html, text/plain)" in printed  # an attachment is no body
