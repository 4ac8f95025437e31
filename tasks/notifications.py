"""Sending a change's notification e-mails (usually two: the student's and the
trainer's): their own task on their own queue, off the fulfilment chain (a slow or dead
mail server holds up only this queue's worker), published through the outbox like every
hand-off, and sent on one SMTP connection.

The guarantee (docs/guarantees.md, "Notifications"), step by step in domain.notifications:

- Redelivered, published twice, replayed, or run twice at once: the e-mail is sent
  once. A copy that finds the row sent does nothing; a concurrent copy waits for the
  row lock held while the first one sends, then finds it sent.
- A worker killed after the mail server took the message (its 250 after DATA) and
  before the commit that records it: the row stays `sending` with the attempt counted;
  the redelivered task sends the message again, with the same Message-ID. Exactly once
  is impossible here (an SMTP server cannot take part in our transaction); we choose
  at least once (a lost confirmation is worse than a duplicate), and the duplicate
  carries the Message-ID of the first, so a receiver or a person can drop it. (A
  server slow enough that step 3's transaction outlives PostgreSQL's idle-in-transaction
  limit ends the same way: that commit fails, the retry sends again.)
- A server that is down or answers 4xx: retried with exponential backoff; 5xx or
  retries spent: `failed` and a dead letter (a replay sends it, once).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import TimeLimitExceeded

from core.mail import Mail, MailRejected, MailUnavailable
from domain import notifications
from domain.clock import utcnow
from domain.errors import PermanentStepError, TransientStepError
from models import NotificationStatus, execute_autocommit
from tasks.base import PipelineTask, step
from tasks.chains import SEND_NOTIFICATION as SEND

log = logging.getLogger(__name__)


class NotificationTask(PipelineTask):
    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        # Given up (5xx, or retries spent): say so on the rows not sent, then the dead
        # letter. (A hard time limit is not giving up: the message is requeued, see
        # PipelineTask.)
        if args and not isinstance(exc, TimeLimitExceeded):
            _record(self, _ids(args[0]), NotificationStatus.FAILED, exc)
        super().on_failure(exc, task_id, args, kwargs, einfo)


def _ids(notification_ids: int | list[int]) -> list[int]:
    # A single id: a message (or a dead letter) of the release before, one e-mail each.
    return [notification_ids] if isinstance(notification_ids, int) else list(notification_ids)


def _bind(task: PipelineTask) -> Any:
    with task.tutorflow.database.session() as session:  # no connection is taken
        return session.get_bind()


def _record(
    task: PipelineTask, notification_ids: list[int], status: NotificationStatus, exc: BaseException
) -> None:
    try:
        execute_autocommit(
            _bind(task),
            notifications.RECORD_FAILURE,
            {"notification_ids": notification_ids, "status": status, "error": str(exc)[:2000]},
        )
    except Exception:  # the retry or dead letter still happens; the row says less
        log.warning("could not record the failed attempt", exc_info=True)


@step(SEND, max_retries=8, base=NotificationTask)
def send_notification(
    self: NotificationTask, notification_ids: int | list[int], *, correlation_id: str
) -> list[str]:
    """One change's e-mails (the ids its transaction wrote), in order, on one SMTP
    connection; the Message-IDs sent now. The three steps (domain.notifications) take
    all the rows at once: claimed in one committed statement, locked together while the
    messages go out, marked and committed together. A server that is down stops the run
    (the rows not sent say `retrying`; the retry sends them); a message refused for good
    is failed and the others still go, then the task gives up (a dead letter naming the
    refused ones: a replay sends only what is not sent)."""
    ids = _ids(notification_ids)
    # 1. Claimed and committed on its own (a Connection, not a Session: the commit the
    # fault harness pauses at is step 3's).
    execute_autocommit(_bind(self), notifications.CLAIM, {"notification_ids": ids})
    sent: list[str] = []
    refused: list[str] = []
    unavailable: MailUnavailable | None = None
    # 2. Locked while the messages go out; 3. marked, committed (with the sends that
    # went out before a failure, which must stay sent).
    with (
        self.tutorflow.mailer.session() as connection,
        self.tutorflow.database.transaction() as session,
    ):
        pending = notifications.lock_for_sending(session, ids)
        if not pending:  # a copy of a task that has run (a redelivery, a re-publish)
            log.info("notification sent already", extra={"notification_ids": ids})
        outcomes: list[notifications.Outcome] = []
        for notification in pending:
            try:
                connection.send(
                    Mail(
                        recipient=notification.recipient,
                        subject=notification.subject,
                        body=notification.body,
                        message_id=notification.message_id,
                    )
                )
            except MailUnavailable as exc:
                unavailable = exc
                break
            except MailRejected as exc:
                outcomes.append(notifications.refused(notification.id, str(exc)))
                refused.append(f"notification {notification.id}: {exc}")
                continue
            outcomes.append(notifications.sent(notification.id, utcnow()))
            sent.append(notification.message_id)
        notifications.record_outcomes(session, outcomes)
    if sent:
        log.info("notifications sent", extra={"notification_ids": ids, "sent": len(sent)})
    if unavailable is not None:
        # The rows not sent wait for the server (each says why).
        _record(self, ids, NotificationStatus.RETRYING, unavailable)
        raise TransientStepError(str(unavailable)) from unavailable
    if refused:
        raise PermanentStepError("; ".join(refused))
    return sent
