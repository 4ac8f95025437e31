"""Outgoing e-mail over SMTP (the standard library's smtplib), sorted like the provider's
outcomes (core/provider.py) so the notification task knows whether to retry:

- `MailUnavailable`: no connection, a timeout, a 4xx answer — the server did not take
  the message; try again later.
- `MailRejected`: a 5xx answer — this message will never be taken as it is.

`SMTP_URL` names the server: `smtp://host:port` (plain; `?starttls=1` upgrades the
connection), `smtps://host:port` (TLS from the start). The login is SMTP_USER and
SMTP_PASSWORD, or the URL's own user:password; it is never logged. One connection per
message: notifications are few, and a connection kept open would go stale between them.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from urllib.parse import parse_qs, unquote, urlsplit

from core.config import Settings


class MailUnavailable(Exception):
    """The server did not take the message (down, slow, or a temporary refusal)."""


class MailRejected(Exception):
    """The server refused the message for good (a 5xx answer)."""


@dataclass(frozen=True)
class Mail:
    recipient: str
    subject: str
    body: str
    # The same for every attempt at one notification: a receiver (or a person) can tell
    # a second copy of one message from a second message.
    message_id: str


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    implicit_tls: bool
    starttls: bool
    user: str | None
    password: str | None

    @classmethod
    def from_url(cls, url: str, user: str | None = None, password: str | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("SMTP_URL must look like smtp://host:port or smtps://host:port")
        implicit_tls = parts.scheme == "smtps"
        flags = parse_qs(parts.query)
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if implicit_tls else 25),
            implicit_tls=implicit_tls,
            starttls=flags.get("starttls", ["0"])[0].lower() in ("1", "true", "yes"),
            user=user or (unquote(parts.username) if parts.username else None),
            password=password or (unquote(parts.password) if parts.password else None),
        )

    def __repr__(self) -> str:  # never the password
        return f"SmtpServer({self.host}:{self.port})"


class Mailer:
    def __init__(self, server: SmtpServer, *, sender: str, timeout: float) -> None:
        self.server = server
        self.sender = sender
        self.timeout = timeout

    @classmethod
    def for_settings(cls, settings: Settings) -> Mailer:
        server = SmtpServer.from_url(settings.smtp_url, settings.smtp_user, settings.smtp_password)
        return cls(server, sender=settings.mail_from, timeout=settings.smtp_timeout)

    def message(self, mail: Mail) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = mail.recipient
        message["Subject"] = mail.subject
        message["Message-ID"] = mail.message_id
        message["Date"] = formatdate(usegmt=True)
        message.set_content(mail.body)
        return message

    def send(self, mail: Mail) -> None:
        """Hand the message to the server; returns once the server has taken it (its
        250 after DATA). Raises MailUnavailable or MailRejected."""
        server = self.server
        try:
            if server.implicit_tls:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    server.host,
                    server.port,
                    timeout=self.timeout,
                    context=ssl.create_default_context(),
                )
            else:
                smtp = smtplib.SMTP(server.host, server.port, timeout=self.timeout)
            with smtp:
                if server.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if server.user and server.password:
                    smtp.login(server.user, server.password)
                smtp.send_message(self.message(mail))
        except smtplib.SMTPResponseException as exc:
            text = f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"
            if exc.smtp_code >= 500:
                raise MailRejected(text) from None
            raise MailUnavailable(text) from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            text = f"recipient refused: {codes}"
            if all(code >= 500 for code in codes):
                raise MailRejected(text) from None
            raise MailUnavailable(text) from None
        except (smtplib.SMTPException, OSError) as exc:
            # Connection refused or reset, timeout, TLS failure: nothing was taken.
            raise MailUnavailable(f"{type(exc).__name__}: {exc}") from None
