"""Beat jobs: keep the session window full, relay stranded outbox rows, prune.

Each job holds a PostgreSQL advisory lock while it runs, so a second copy (a second
beat by accident, a manual run) does nothing; the jobs are idempotent regardless.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, cast

from celery import Task, shared_task
from sqlalchemy import CursorResult, delete, func, select
from sqlalchemy.exc import OperationalError

from actions import payments
from core.provider import ProviderUnavailable
from domain import availability, fulfilment, reallocation
from domain.clock import utcnow
from domain.top_up import Shard, TopUpReport, top_up_batch
from models import Database, OutboxMessage, ProcessedEvent, WebhookEvent
from tasks import dead_letters
from tasks.base import Housekeeping, app_of
from tasks.celery_app import TutorflowCelery
from tasks.chains import SETTLE_DEAD_LETTERS, SETTLE_PENDING_KEY

log = logging.getLogger(__name__)

# Stable keys for pg_try_advisory_lock (any bigint; these spell the job names).
LOCK_KEYS = {
    "top_up_sessions": 0x7475746F7570,
    "relay_outbox": 0x72656C6179,
    "resume_stalled": 0x726573756D65,
    "prune": 0x7072756E65,
    "give_up": 0x67697665,
    "release_holds": 0x686F6C6473,
    "wake_waiting": 0x77616B65,
}
RELAY_BATCH = 200
PRUNE_BATCH = 5000


def job(name: str):
    """A beat job: acks late, retried if the database is briefly away; Flower sees its
    failures and retries only (tasks.base.Housekeeping)."""
    return shared_task(
        base=Housekeeping,
        bind=True,
        name=name,
        acks_late=True,
        autoretry_for=(OperationalError,),
        retry_backoff=True,
        retry_backoff_max=60,
        max_retries=3,
    )


@contextmanager
def exclusive(database: Database, job_name: str) -> Iterator[bool]:
    """True if this process holds the job's advisory lock for the duration."""
    with database.engine.connect() as connection:
        key = LOCK_KEYS[job_name]
        acquired = connection.scalar(select(func.pg_try_advisory_lock(key)))
        try:
            if not acquired:
                log.info("%s already running elsewhere; skipping", job_name)
            yield bool(acquired)
        finally:
            if acquired:
                connection.execute(select(func.pg_advisory_unlock(key)))
            connection.commit()


def run_top_up(
    app: TutorflowCelery, *, batch_size: int | None = None, threads: int | None = None
) -> TopUpReport:
    """Top up every active allocation, one batch per transaction, `threads` shards of
    the trainers side by side (a batch waits on the database about half its time, and
    the server has cores for another meanwhile)."""
    settings, database = app.settings, app.database
    now = utcnow()
    shards = threads or settings.top_up_threads

    def top_up_shard(index: int) -> TopUpReport:
        report, after = TopUpReport(), 0
        while True:
            with database.transaction() as session:
                batch, last = top_up_batch(
                    session,
                    now=now,
                    after_id=after,
                    limit=batch_size or settings.top_up_batch_size,
                    window=settings.session_window,
                    threshold=settings.top_up_threshold,
                    shard=Shard(index, shards),
                )
            report.add(batch)
            if last is None:
                return report
            after = last

    report = TopUpReport()
    with ThreadPoolExecutor(max_workers=shards) as pool:
        for part in pool.map(top_up_shard, range(shards)):
            report.add(part)
    return report


@job(name="tutorflow.beat.top_up_sessions")
def top_up_sessions(self: Task) -> dict[str, Any]:
    app = app_of(self)
    with exclusive(app.database, "top_up_sessions") as mine:
        if not mine:
            return {"skipped": True}
        report = run_top_up(app)
    log.info("top-up done", extra={"report": vars(report)})
    return vars(report)


@job(name="tutorflow.beat.relay_outbox")
def relay_outbox(self: Task) -> dict[str, int]:
    """Publish outbox rows the API did not (crash after commit, broker down)."""
    app = app_of(self)
    with exclusive(app.database, "relay_outbox") as mine:
        if not mine:
            return {"skipped": 1}
        report = app.outbox.relay(
            app.database, grace_seconds=app.settings.outbox_relay_grace_seconds, limit=RELAY_BATCH
        )
    published, failed = report.published, report.failed
    # Every few seconds: an idle run is DEBUG (so are Celery's own lines about it, see
    # ROUTINE_TASKS), so a quiet stack has a quiet log; a run that did something is INFO.
    if published or failed:
        log.info("outbox relay", extra={"published": published, "failed": failed})
    else:
        log.debug("outbox relay: nothing to publish")
    return {"published": published, "failed": failed}


@job(name="tutorflow.beat.resume_stalled_pipelines")
def resume_stalled_pipelines(self: Task) -> dict[str, int]:
    """Publish again the chain of any payment stuck half-way (a link lost with the
    broker, a message dropped): every step returns its stored result, so only the
    missing work is done. Payments with an open dead letter are left to operators."""
    app = app_of(self)
    resumed = 0
    with exclusive(app.database, "resume_stalled") as mine:
        if not mine:
            return {"skipped": 1}
        with app.database.transaction() as session:
            stalled = fulfilment.stalled_payments(
                session,
                now=utcnow(),
                stall=timedelta(seconds=app.settings.pipeline_stall_seconds),
                limit=RELAY_BATCH,
            )
            for payment_id, student_id in stalled:
                # Its event and outbox row: the chain is published after the commit.
                fulfilment.mark_resumed(session, payment_id, student_id)
                resumed += 1
    if resumed:
        log.warning("resumed stalled pipelines", extra={"count": resumed})
    return {"resumed": resumed}


@job(name="tutorflow.beat.give_up_unallocated")
def give_up_unallocated(self: Task) -> dict[str, int]:
    """Refund paid courses that found no trainer in ALLOCATION_GIVE_UP_HOURS, one
    payment at a time (each asks the provider, outside any transaction). A provider
    outage leaves the rest to the next run."""
    app = app_of(self)
    hours = app.settings.allocation_give_up_hours
    refunded = 0
    with exclusive(app.database, "give_up") as mine:
        if not mine:
            return {"skipped": 1}
        with app.database.session() as session:
            due = fulfilment.unallocated_payments(
                session, now=utcnow(), give_up=timedelta(hours=hours), limit=RELAY_BATCH
            )
        provider = app.provider
        for payment_id in due:
            try:
                payments.give_up_allocation(app.database, provider, payment_id, hours=hours)
            except ProviderUnavailable:
                log.warning("provider unavailable; give-up refunds wait", exc_info=True)
                break
            refunded += 1
    if refunded:
        log.warning("refunded courses no trainer could take", extra={"count": refunded})
    return {"refunded": refunded}


@job(name="tutorflow.beat.release_expired_holds")
def release_expired_holds(self: Task) -> dict[str, int]:
    """Mark expired checkout holds released. They stopped counting at their expiry
    already (availability and checkouts read `expires_at`): this keeps the table
    truthful and its live-hold index small."""
    app = app_of(self)
    released = 0
    with exclusive(app.database, "release_holds") as mine:
        if not mine:
            return {"skipped": 1}
        while True:
            with app.database.transaction() as session:
                batch = availability.release_expired(session, now=utcnow(), limit=PRUNE_BATCH)
            released += len(batch)
            if len(batch) < PRUNE_BATCH:
                break
    if released:
        log.info("released expired holds", extra={"count": released})
    return {"released": released}


@job(name="tutorflow.beat.wake_waiting_allocations")
def wake_waiting_allocations(self: Task) -> dict[str, int]:
    """Ask every allocation waiting for a trainer to try again (a trainer change wakes
    its courses' waiting at once; this covers places freed otherwise: a course finished,
    a refund, an expired hold)."""
    app = app_of(self)
    with exclusive(app.database, "wake_waiting") as mine:
        if not mine:
            return {"skipped": 1}
        with app.database.transaction() as session:
            woken = reallocation.wake_waiting(session, None, limit=RELAY_BATCH)
    return {"woken": woken}


@job(name="tutorflow.beat.prune_retention")
def prune_retention(self: Task) -> dict[str, int]:
    """Drop published outbox rows and old inbox/webhook rows, in short batches.

    A pruned inbox row only means a very late redelivery runs its step again, which
    the domain functions absorb (they are idempotent on their own).
    """
    app = app_of(self)
    now = utcnow()
    targets = [
        (OutboxMessage, OutboxMessage.published_at, app.settings.outbox_retention_days),
        (ProcessedEvent, ProcessedEvent.processed_at, app.settings.inbox_retention_days),
        (WebhookEvent, WebhookEvent.received_at, app.settings.inbox_retention_days),
    ]
    removed: dict[str, int] = {}
    with exclusive(app.database, "prune") as mine:
        if not mine:
            return {"skipped": 1}
        for model, stamp, days in targets:
            cutoff = now - timedelta(days=days)
            key = model.__mapper__.primary_key[0]
            total = 0
            while True:
                with app.database.transaction() as session:
                    doomed = select(key).where(stamp < cutoff).limit(PRUNE_BATCH)
                    result = session.execute(delete(model).where(key.in_(doomed)))
                    deleted = cast(CursorResult[Any], result).rowcount
                total += deleted
                if deleted < PRUNE_BATCH:
                    break
            removed[model.__tablename__] = total
    log.info("retention", extra={"removed": removed})
    return removed


@job(name=SETTLE_DEAD_LETTERS)
def settle_dead_letters(self: Task) -> dict[str, int]:
    """The dead_letter queue holds one message per open letter again (after a replay
    or discard, through the outbox; every minute from beat)."""
    app = app_of(self)
    settled = dead_letters.settle(
        app, app.database, asked=lambda: app.cache.release(SETTLE_PENDING_KEY)
    )
    if settled.taken_out != settled.parked or settled.recorded:
        log.info("dead_letter queue settled", extra=vars(settled))
    return vars(settled)
