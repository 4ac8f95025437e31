"""A real SMTP server (aiosmtpd) in a thread of the test run, on a free loopback port.

It speaks SMTP like any server: the tests' e-mails and those of the workers they start
(which inherit SMTP_URL) cross a real socket, and each message the server took (its 250
after DATA) is kept here, parsed, for the tests to read.
"""

from __future__ import annotations

import email
import email.policy
import threading
from dataclasses import dataclass
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from harness.processes import free_port


@dataclass(frozen=True)
class Received:
    envelope_to: tuple[str, ...]
    message: EmailMessage
    peer: object  # the client's (address, port): one per SMTP connection

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"]).strip()  # a long header may be folded

    @property
    def body(self) -> str:
        part = self.message.get_body(("plain",))
        text = part.get_content() if part is not None else ""
        return text.replace("\r\n", "\n")  # SMTP lines end in CRLF on the wire


class _Recorder:
    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.lock = threading.Lock()

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        # A mailbox that does not exist, for the tests of a permanent refusal.
        if address.startswith("bounce@"):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        raw = content if isinstance(content, bytes) else str(content).encode()
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.messages.append(Received(tuple(envelope.rcpt_tos), message, session.peer))
        return "250 Message accepted for delivery"


class SmtpSink:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.recorder = _Recorder()
        self.controller = Controller(self.recorder, hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def received(self, to: str | None = None) -> list[Received]:
        with self.recorder.lock:
            return [m for m in self.recorder.messages if to is None or to in m.envelope_to]

    def clear(self) -> None:
        with self.recorder.lock:
            self.recorder.messages.clear()


_shared: list[SmtpSink] = []


def shared() -> SmtpSink:
    """The run's sink (SMTP_URL points at it), started on first use."""
    if not _shared:
        _shared.append(SmtpSink().start())
    return _shared[0]
