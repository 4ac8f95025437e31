"""The e-mails a change owes, written in the change's own transaction; and the steps of
sending one (tasks/notifications.py runs them).

Each `*_notice` function renders the message now (what was true when it happened: the
sessions as booked, each time in the reader's own zone with the zone named) and writes a
`notifications` row with an outbox message beside it. The row's UNIQUE key makes writing
the same news twice a no-op that also publishes nothing. The outbox message is published
after the commit by the one after-commit channel, or later by the beat relay, to the
send task on its own queue: the change never waits for a mail server.

Sending cannot be atomic with a commit; the protocol (docs/guarantees.md, "Notifications"),
for all the rows of one send task at once:
1. `CLAIM` commits status sending and attempts + 1 on its own (the record that the
   server may now have the messages);
2. `lock_for_sending` locks the rows in a second transaction that stays open while the
   messages go out, so a concurrent copy of the task waits, then finds them sent;
3. `record_outcomes` records each acceptance (and each refusal), and that transaction
   commits.
A crash between the server's first acceptance and that commit leaves the rows `sending`;
the redelivered task sends again with the same Message-IDs. At least once, never twice
without such a crash, and a second copy is always recognisable.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, Row, any_, bindparam, func, select, text, update
from sqlalchemy.orm import Session, lazyload

from domain.calendar import Shift, session_start
from models import (
    Allocation,
    Course,
    Notification,
    NotificationKind,
    NotificationStatus,
    OutboxKind,
    SessionStatus,
    Student,
    Trainer,
    TutoringSession,
    id_array,
    outbox,
)

MESSAGE_ID_DOMAIN = "notifications.tutorflow"
_KEY_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, MESSAGE_ID_DOMAIN)


def local_time(instant: datetime, timezone: str) -> str:
    """'Monday 30 November 2026, 17:00 (Europe/Berlin)': the reader's wall clock, named."""
    local = instant.astimezone(ZoneInfo(timezone))
    return f"{local:%A %-d %B %Y, %H:%M} ({timezone})"


def local_day(day: date) -> str:
    return f"{day:%A %-d %B %Y}"


def message_id(kind: str, recipient: str, correlation_id: uuid.UUID, occasion: str) -> str:
    """The Message-ID every attempt at this notification sends: from its unique key."""
    key = "\x1f".join((kind, recipient.lower(), str(correlation_id), occasion))
    return f"<{kind}.{uuid.uuid5(_KEY_NAMESPACE, key).hex}@{MESSAGE_ID_DOMAIN}>"


@dataclass(frozen=True)
class Notice:
    """One e-mail a change owes, rendered now."""

    kind: NotificationKind
    recipient: str
    subject: str
    body: str
    # Which event of its kind, for kinds that happen more than once per payment.
    occasion: str = ""


# The notices of one change and their one outbox message, in one statement of plain SQL
# (SQLAlchemy gives a PostgreSQL INSERT … ON CONFLICT no cache key: built with it, this
# was compiled afresh twice a payment; BENCHMARKS.md, "Issue 25"). The message names
# every row the INSERT wrote, so one send task mails them on one SMTP connection; a
# notice owed already (the unique key) is skipped, and nothing written publishes nothing.
_WRITE = outbox.insert_select_sql(
    "SELECT CAST(:correlation_id AS uuid), CAST(:outbox_kind AS varchar),"
    " jsonb_build_object('notification_ids', jsonb_agg(id ORDER BY id),"
    " 'payment_id', CAST(:correlation_id AS text))"
    " FROM written HAVING count(*) > 0",
    with_sql=(
        "WITH written AS ("
        " INSERT INTO notifications"
        " (kind, recipient, correlation_id, occasion, subject, body, message_id)"
        " SELECT n.kind, n.recipient, CAST(:correlation_id AS uuid), n.occasion, n.subject,"
        " n.body, n.message_id"
        " FROM unnest(CAST(:kinds AS text[]), CAST(:recipients AS text[]),"
        " CAST(:occasions AS text[]), CAST(:subjects AS text[]), CAST(:bodies AS text[]),"
        " CAST(:message_ids AS text[]))"
        " AS n (kind, recipient, occasion, subject, body, message_id)"
        " ON CONFLICT ON CONSTRAINT uq_notifications_key DO NOTHING RETURNING id)"
    ),
)


def write(session: Session, correlation_id: uuid.UUID, notices: Sequence[Notice]) -> list[int]:
    """The notices' rows and one outbox message naming them; the ids written (none for
    news already owed to its recipient)."""
    if not notices:
        return []
    written = outbox.execute(
        session,
        _WRITE,
        {
            "correlation_id": str(correlation_id),
            "outbox_kind": OutboxKind.SEND_NOTIFICATION.value,
            "kinds": [n.kind.value for n in notices],
            "recipients": [n.recipient for n in notices],
            "occasions": [n.occasion for n in notices],
            "subjects": [n.subject for n in notices],
            "bodies": [n.body for n in notices],
            "message_ids": [
                message_id(n.kind, n.recipient, correlation_id, n.occasion) for n in notices
            ],
        },
    )
    return [int(i) for row in written for i in row.outbox_payload["notification_ids"]]


def _lines(instants: Iterable[datetime], timezone: str) -> str:
    return "\n".join(f"  - {local_time(i, timezone)}" for i in instants)


Parties = tuple[Student, Trainer, Course]


def parties(session: Session, allocation: Allocation) -> Parties:
    """The allocation's student, trainer and course, in one round trip."""
    student, trainer, course = session.execute(
        PARTIES,
        {
            "student_id": allocation.student_id,
            "trainer_id": allocation.trainer_id,
            "course_id": allocation.course_id,
        },
    ).one()
    return student, trainer, course


# Built once (bound parameters): it runs on every booking. domain.fulfilment's
# schedule_window reads it with the allocation's sessions so far joined.
PARTIES = (
    select(Student, Trainer, Course)
    .select_from(Student)
    .join(Trainer, Trainer.id == bindparam("trainer_id", type_=BigInteger))
    .join(Course, Course.id == bindparam("course_id", type_=BigInteger))
    .where(Student.id == bindparam("student_id", type_=BigInteger))
    .options(lazyload(Course.prices))  # not needed here: no second query for them
)


def _upcoming(session: Session, allocation: Allocation, now: datetime) -> list[datetime]:
    return list(
        session.scalars(
            select(TutoringSession.starts_at)
            .where(
                TutoringSession.allocation_id == allocation.id,
                TutoringSession.status == SessionStatus.SCHEDULED,
                TutoringSession.starts_at > now,
            )
            .order_by(TutoringSession.starts_at)
        )
    )


def sessions_booked_notice(
    session: Session,
    payment_id: uuid.UUID,
    allocation: Allocation,
    starts: list[datetime],
    people: Parties | None = None,
) -> None:
    """The student's confirmation (their zone) and the trainer's new-student notice
    (the trainer's zone), listing the first sessions booked. `people`: the parties, if
    the caller has them already."""
    student, trainer, course = people or parties(session, allocation)
    starts = sorted(starts)
    confirmation = Notice(
        kind=NotificationKind.SESSIONS_BOOKED,
        recipient=student.email,
        subject=f"Your {course.title} sessions are booked",
        body=(
            f"Hello {student.name},\n\n"
            f"your {course.title} sessions with {trainer.name} are booked. "
            f"The first {len(starts)}, in your time zone:\n\n"
            f"{_lines(starts, student.timezone)}\n\n"
            f"{allocation.sessions_total} sessions in all; the next ones are booked as "
            "these take place.\n"
        ),
    )
    trainers = _new_student_notice(
        (student, trainer, course), starts, occasion="", joins="joins you"
    )
    write(session, payment_id, [confirmation, trainers])


def _new_student_notice(
    people: Parties, starts: list[datetime], *, occasion: str, joins: str
) -> Notice:
    """The trainer's notice of a student who `joins` them, sessions in their zone."""
    student, trainer, course = people
    return Notice(
        kind=NotificationKind.NEW_STUDENT,
        recipient=trainer.email,
        occasion=occasion,
        subject=f"New student for {course.title}: {student.name}",
        body=(
            f"Hello {trainer.name},\n\n"
            f"{student.name} <{student.email}> {joins} for {course.title}. Their next "
            f"sessions, in your time zone:\n\n{_lines(starts, trainer.timezone)}\n"
        ),
    )


def session_rescheduled_notice(
    session: Session, payment_id: uuid.UUID, tutoring: TutoringSession, was: datetime
) -> None:
    """The student and the trainer, each with the old and new time in their own zone."""
    student = session.get_one(Student, tutoring.student_id)
    trainer = session.get_one(Trainer, tutoring.trainer_id)
    occasion = f"session {tutoring.id}: {was.isoformat()} > {tutoring.starts_at.isoformat()}"
    write(
        session,
        payment_id,
        [
            Notice(
                kind=NotificationKind.SESSION_RESCHEDULED,
                recipient=recipient,
                occasion=occasion,
                subject=f"Session moved to {local_time(tutoring.starts_at, timezone)}",
                body=(
                    f"Hello {name},\n\n"
                    f"the session {whose} on {local_time(was, timezone)} has moved to "
                    f"{local_time(tutoring.starts_at, timezone)}.\n"
                ),
            )
            for recipient, name, timezone, whose in (
                (student.email, student.name, student.timezone, f"with {trainer.name}"),
                (trainer.email, trainer.name, trainer.timezone, f"with {student.name}"),
            )
        ],
    )


def sessions_shifted_notice(
    session: Session,
    payment_id: uuid.UUID,
    *,
    student_id: int,
    allocation_id: int,
    slot: time,
    shifts: list[Shift],
) -> None:
    """The student: planned dates that were taken, and the dates used instead."""
    if not shifts:
        return
    student = session.get_one(Student, student_id)
    moved = "\n".join(
        f"  - {local_day(s.wanted)} → "
        f"{local_time(session_start(s.got, slot, student.timezone), student.timezone)}"
        f" ({s.reason.replace('_', ' ')})"
        for s in shifts
    )
    occasion = f"allocation {allocation_id}: " + ", ".join(
        f"{s.wanted.isoformat()}>{s.got.isoformat()}" for s in shifts
    )
    notice = Notice(
        kind=NotificationKind.SESSIONS_SHIFTED,
        recipient=student.email,
        occasion=occasion[:200],
        subject=f"{len(shifts)} session(s) moved to another day",
        body=(
            f"Hello {student.name},\n\n"
            "these sessions could not take their usual day and moved to the next free "
            f"weekday:\n\n{moved}\n"
        ),
    )
    write(session, payment_id, [notice])


def trainer_changed_notice(
    session: Session,
    payment_id: uuid.UUID,
    allocation: Allocation,
    *,
    from_trainer_id: int,
    now: datetime,
) -> None:
    """The student hears of the new trainer; the new trainer gets a new-student notice."""
    student, trainer, course = parties(session, allocation)
    upcoming = _upcoming(session, allocation, now)
    occasion = f"allocation {allocation.id}: trainer {from_trainer_id} > {trainer.id}"
    students = Notice(
        kind=NotificationKind.TRAINER_CHANGED,
        recipient=student.email,
        occasion=occasion,
        subject=f"Your {course.title} trainer is now {trainer.name}",
        body=(
            f"Hello {student.name},\n\n"
            f"your trainer for {course.title} could no longer take your sessions: "
            f"{trainer.name} takes them from now on. Your next sessions, in your time "
            f"zone:\n\n{_lines(upcoming, student.timezone)}\n"
        ),
    )
    trainers = _new_student_notice(
        (student, trainer, course),
        upcoming,
        occasion=occasion,
        joins="moves to you from another trainer",
    )
    write(session, payment_id, [students, trainers])


def waiting_for_trainer_notice(
    session: Session, payment_id: uuid.UUID, allocation: Allocation, *, withdrawn: list[datetime]
) -> None:
    """The student hears that their trainer left and nobody could take them yet: the
    sessions withdrawn, and what happens next."""
    student, trainer, course = parties(session, allocation)
    listed = _lines(withdrawn, student.timezone) if withdrawn else "(none were booked)"
    notice = Notice(
        kind=NotificationKind.WAITING_FOR_TRAINER,
        recipient=student.email,
        occasion=f"allocation {allocation.id}: trainer {trainer.id} left",
        subject=f"We are finding you a new {course.title} trainer",
        body=(
            f"Hello {student.name},\n\n"
            f"{trainer.name} can no longer teach your {course.title} sessions and no other "
            "trainer is free at your time yet. These sessions will not take place:\n\n"
            f"{listed}\n\n"
            "As soon as a trainer is free we book your next sessions with them and write "
            "to you; if none is found in time, your payment is refunded.\n"
        ),
    )
    write(session, payment_id, [notice])


def refunded_notice(
    session: Session,
    payment_id: uuid.UUID,
    *,
    student_id: int,
    amount_cents: int,
    currency: str,
    sessions_cancelled: int,
) -> None:
    student = session.get_one(Student, student_id)
    notice = Notice(
        kind=NotificationKind.REFUNDED,
        recipient=student.email,
        subject="Your payment was refunded",
        body=(
            f"Hello {student.name},\n\n"
            f"your payment of {amount_cents / 100:.2f} {currency} was refunded. "
            f"{sessions_cancelled} upcoming session(s) were cancelled.\n"
        ),
    )
    write(session, payment_id, [notice])


# Sending (tasks/notifications.py), all of a send task's rows at once. Step 1, in its own
# committed statement: from now on the server may have the messages. A row another
# sender holds locked (step 2) is waited for; found sent then, it is not claimed.
_IDS = id_array("notification_ids")
CLAIM = (
    update(Notification)
    .where(
        Notification.id == any_(_IDS),
        Notification.status != NotificationStatus.SENT,
    )
    .values(
        status=NotificationStatus.SENDING,
        attempts=Notification.attempts + 1,
        last_attempt_at=func.now(),
    )
)

# After an attempt that the server did not take (it was rolled back): say why. A row
# sent meanwhile is left as it is.
RECORD_FAILURE = (
    update(Notification)
    .where(
        Notification.id == any_(_IDS),
        Notification.status != NotificationStatus.SENT,
    )
    .values(status=bindparam("status"), last_error=bindparam("error"))
)


# Steps 2 and 3 in plain SQL, built once: they run on every send task. The rows to send
# are read as plain rows (the five columns a message needs) and their outcomes written
# together in one UPDATE. As Notification entities they cost a SELECT built on every
# call (its coercions and cache key each time) and attribute writes that the unit of
# work flushed at commit, an UPDATE per row: 40% of the send task's CPU in SQLAlchemy.
_LOCK = text(
    "SELECT id, recipient, subject, body, message_id FROM notifications"
    " WHERE id = ANY(CAST(:notification_ids AS bigint[])) AND status <> 'sent'"
    " ORDER BY id FOR UPDATE"
)
# Each row's outcome: sent (when; its last error cleared), or refused for good (why; a
# refused row keeps the sent_at it had).
_RECORD_OUTCOMES = text(
    "UPDATE notifications SET status = o.status,"
    " sent_at = coalesce(o.sent_at, notifications.sent_at), last_error = o.error"
    " FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS text[]),"
    " CAST(:sent_ats AS timestamptz[]), CAST(:errors AS text[]))"
    " AS o (id, status, sent_at, error)"
    " WHERE notifications.id = o.id"
)


def lock_for_sending(session: Session, notification_ids: list[int]) -> Sequence[Row[Any]]:
    """Step 2: the rows still to send (id, recipient, subject, body, message_id), in id
    order, locked until this transaction ends (none: nothing to send, or sent already)."""
    return session.execute(_LOCK, {"notification_ids": notification_ids}).all()


@dataclass(frozen=True)
class Outcome:
    """What the server said of one row: `sent` or `refused`."""

    notification_id: int
    status: NotificationStatus
    sent_at: datetime | None
    error: str | None


def sent(notification_id: int, now: datetime) -> Outcome:
    """The server took it."""
    return Outcome(notification_id, NotificationStatus.SENT, now, None)


def refused(notification_id: int, error: str) -> Outcome:
    """The server refused it for good (a 5xx)."""
    return Outcome(notification_id, NotificationStatus.FAILED, None, error[:2000])


def record_outcomes(session: Session, outcomes: Sequence[Outcome]) -> None:
    """Step 3: the outcomes, in one statement; committed with the lock's transaction."""
    if not outcomes:
        return
    session.execute(
        _RECORD_OUTCOMES,
        {
            "ids": [o.notification_id for o in outcomes],
            "statuses": [o.status.value for o in outcomes],
            "sent_ats": [o.sent_at for o in outcomes],
            "errors": [o.error for o in outcomes],
        },
    )
