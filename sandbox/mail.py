"""`python -m sandbox.mail [--host H] [--port 1025]`: the local stand-in for a mail relay
(development only: `make up`, docker compose). Every message is taken (250) and printed
on stdout as a person reads it, where honcho and `docker compose logs` show it; nothing
is delivered.

One block per mail: From, To, Subject and Message-ID, then the text body decoded
(quoted-printable or base64 undone, the charset applied), the lines the receiver's
mail client would show rather than the wire's; headers as they came, their encoded
words decoded (a name is not re-quoted as a mail client might show it). A mail without
a text part names what it has instead. The server is aiosmtpd's; the host's default
comes from SANDBOX_HOST, as for the provider sandbox (`python -m sandbox`), so the
Procfile and compose run the same command, and the port's from MAILSINK_PORT (1025). It
prints one ready line, and stops with exit status 0 on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import email
import email.errors
import email.header
import os
import signal
import sys
import threading
from email.message import Message
from typing import Any, TextIO

from aiosmtpd.controller import Controller

RULE = "-" * 30


def render(content: bytes, mail_from: str | None = None, rcpt_tos: list[str] | None = None) -> str:
    """One mail as a readable block: headers, a blank line, the decoded text body."""
    # compat32 (the parser's default): headers stay strings until asked for. The default
    # policy's header classes parse every header they are given and were most of the
    # sink's CPU in the load bench (1.4 ms a mail); decoding only what is printed costs
    # a tenth of that (BENCHMARKS.md, "Issue 25, third cut").
    message = email.message_from_bytes(content)
    recipients = ", ".join(rcpt_tos or [])
    lines = [f"{RULE} mail"]
    for name, fallback in (
        ("From", mail_from or ""),
        ("To", recipients),
        ("Subject", ""),
        ("Message-ID", ""),
    ):
        value = message.get(name)
        shown = " ".join(_readable(value).split()) if value is not None else fallback
        if shown:
            lines.append(f"{name}: {shown}")
    to = message.get("To")
    if recipients and to is not None and recipients not in _readable(to):
        lines.append(f"(delivered to: {recipients})")
    lines.append("")
    part = _text_body(message)
    if part is not None:
        text = _decoded_payload(part)
        lines.extend(text.replace("\r\n", "\n").rstrip("\n").split("\n"))
    else:
        kinds = sorted({p.get_content_type() for p in message.walk() if not p.is_multipart()})
        lines.append(f"(no text part: {', '.join(kinds) or 'empty'})")
    lines.append(f"{RULE} end of mail")
    return "\n".join(lines)


def _readable(value: Any) -> str:
    """A header as a person reads it: its RFC 2047 encoded words decoded."""
    raw = str(value)
    if "=?" not in raw:
        return raw
    try:
        return str(email.header.make_header(email.header.decode_header(raw)))
    except (LookupError, UnicodeDecodeError, email.errors.HeaderParseError):
        return raw


def _text_body(message: Message) -> Message | None:
    """The part a mail client shows as the text: the first text/plain part that is not
    an attachment, not looking inside attached mails."""
    if message.get_content_maintype() == "multipart":
        for part in message.get_payload():
            found = _text_body(part)
            if found is not None:
                return found
        return None
    if message.get_content_type() == "text/plain" and message.get_content_disposition() != (
        "attachment"
    ):
        return message
    return None


def _decoded_payload(part: Message) -> str:
    """The transfer encoding undone and the charset applied (ASCII when none is named)."""
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    charset = part.get_content_charset() or "us-ascii"
    try:
        return data.decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        return data.decode("ascii", errors="replace")


class PrintingHandler:
    """aiosmtpd handler: takes every message and prints it decoded."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.content
        raw = content if isinstance(content, bytes) else str(content).encode()
        try:
            block = render(raw, envelope.mail_from, list(envelope.rcpt_tos))
        except Exception as exc:  # a mail we cannot parse is still taken, and said so
            block = f"{RULE} mail\n(unreadable: {exc!r}; {len(raw)} bytes)\n{RULE} end of mail"
        print(block, file=self.stream, flush=True)
        return "250 Message accepted for delivery"


def main() -> None:
    parser = argparse.ArgumentParser(description="A local SMTP sink that prints each mail.")
    parser.add_argument("--host", default=os.environ.get("SANDBOX_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("MAILSINK_PORT", "1025")))
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    controller = Controller(PrintingHandler(sys.stdout), hostname=args.host, port=args.port)
    controller.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(
        f"mail sink ready: smtp://{args.host}:{args.port} (SMTP_URL); every message is"
        " printed here, decoded; none is delivered"
    )
    try:
        threading.Event().wait()  # until SIGTERM or Ctrl-C
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
