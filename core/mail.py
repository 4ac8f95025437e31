"""Outgoing e-mail over SMTP (the standard library's smtplib), sorted like the provider's
outcomes (core/provider.py) so the notification task knows whether to retry:

- `MailUnavailable`: no connection, a timeout, a 4xx answer — the server did not take
  the message; try again later.
- `MailRejected`: a 5xx answer — this message will never be taken as it is.

`SMTP_URL` names the server: `smtp://host:port` (plain; `?starttls=1` upgrades the
connection), `smtps://host:port` (TLS from the start). The login is SMTP_USER and
SMTP_PASSWORD, or the URL's own user:password; it is never logged. One connection per
send task (`Mailer.session`: one change's e-mails, usually two), closed when the task is
done: a connection kept open between tasks would go stale.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.charset import QP, Charset
from email.header import Header
from email.mime.nonmultipart import MIMENonMultipart
from email.utils import formataddr, formatdate, parseaddr
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

    def message(self, mail: Mail) -> MIMENonMultipart:
        """The message as it goes out: text/plain, 7bit when it is ASCII, else UTF-8
        quoted-printable (readable on the wire); non-ASCII headers RFC 2047-encoded.
        Built with the email package's compat32 classes: its default-policy
        EmailMessage parses every header it is given, and cost about 4 ms a message,
        this 0.6 (BENCHMARKS.md, "Issue 25")."""
        message = MIMENonMultipart("text", "plain")
        message.set_payload(mail.body, "us-ascii" if mail.body.isascii() else _UTF8_QP)
        message["From"] = _address(self.sender)
        message["To"] = _address(mail.recipient)
        message["Subject"] = _encoded(mail.subject)
        message["Message-ID"] = mail.message_id
        message["Date"] = formatdate(usegmt=True)
        return message

    def send(self, mail: Mail) -> None:
        """Hand one message to the server on a connection of its own; returns once the
        server has taken it (its 250 after DATA). Raises MailUnavailable or MailRejected."""
        with self.session() as session:
            session.send(mail)

    def session(self) -> MailSession:
        """Several messages on one connection (one change's e-mails: a send task)."""
        return MailSession(self)

    def _connect(self) -> smtplib.SMTP:
        server = self.server
        smtp: smtplib.SMTP
        if server.implicit_tls:
            smtp = smtplib.SMTP_SSL(
                server.host, server.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        else:
            smtp = smtplib.SMTP(server.host, server.port, timeout=self.timeout)
        try:
            if server.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if server.user and server.password:
                smtp.login(server.user, server.password)
        except BaseException:
            smtp.close()
            raise
        return smtp


class MailSession:
    """Messages sent on one connection, opened at the first send and closed (QUIT) at
    the end. A failed send drops the connection (its state is unknown); the next send
    opens a new one."""

    def __init__(self, mailer: Mailer) -> None:
        self.mailer = mailer
        self.smtp: smtplib.SMTP | None = None

    def __enter__(self) -> MailSession:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def send(self, mail: Mail) -> None:
        """Returns once the server has taken the message (its 250 after DATA). Raises
        MailUnavailable or MailRejected."""
        try:
            if self.smtp is None:
                self.smtp = self.mailer._connect()
            self.smtp.sendmail(
                parseaddr(self.mailer.sender)[1],
                [parseaddr(mail.recipient)[1]],
                self.mailer.message(mail).as_bytes(),
            )
        except smtplib.SMTPResponseException as exc:
            self._drop()
            text = f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"
            if exc.smtp_code >= 500:
                raise MailRejected(text) from None
            raise MailUnavailable(text) from None
        except smtplib.SMTPRecipientsRefused as exc:
            self._drop()
            codes = [code for code, _ in exc.recipients.values()]
            text = f"recipient refused: {codes}"
            if all(code >= 500 for code in codes):
                raise MailRejected(text) from None
            raise MailUnavailable(text) from None
        except (smtplib.SMTPException, OSError) as exc:
            # Connection refused or reset, timeout, TLS failure: nothing was taken.
            self._drop()
            raise MailUnavailable(f"{type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        if self.smtp is None:
            return
        smtp, self.smtp = self.smtp, None
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass  # what was sent was taken already (each 250); the connection just ends
        finally:
            smtp.close()

    def _drop(self) -> None:
        if self.smtp is not None:
            self.smtp.close()
            self.smtp = None


_UTF8_QP = Charset("utf-8")
_UTF8_QP.body_encoding = QP


def _encoded(value: str) -> str:
    return value if value.isascii() else Header(value, "utf-8").encode()


def _address(value: str) -> str:
    """An address header: a non-ASCII display name RFC 2047-encoded, the address kept."""
    return value if value.isascii() else formataddr(parseaddr(value), "utf-8")
