"""A burst of paying students, and the rows that say how it ended: shared by the soak
(scripts/soak.py) and the multi-host tests (tests/test_hosts.py).

`prepare` makes a fresh database with N students who paid at the provider sandbox and
have yet to say so; `report` counts payments, fulfilled, duplicate rows and lost, and
the dead letters by reason. Nothing here reads or changes the environment.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests
from sqlalchemy import create_engine, text

from bootstrap import bootstrap
from core.config import get_settings
from domain.catalogue import hours_for_all_trainers
from harness.database import rebuild_database
from harness.processes import time_limit_env

CAPACITY = 50
# Recovery in seconds, not production's minutes: a visibility timeout still above the
# task time limit plus the longest retry countdown, PostgreSQL's timeouts under the soft
# limit (the startup check insists on both), a relay every second and a stalled-pipeline
# sweep after 30 s. The tests that lose a host, a link or a broker primary mid-burst run
# with these.
FAST_RECOVERY = {
    "CELERY_VISIBILITY_TIMEOUT": "20",
    **time_limit_env(12),
    "PIPELINE_STALL_SECONDS": "30",
    "OUTBOX_RELAY_INTERVAL_SECONDS": "1",
    "OUTBOX_RELAY_GRACE_SECONDS": "2",
    "RATE_LIMIT_PUBLIC": "1000000/minute",
}
SLOTS = [f"{6 + i // 4:02d}:{15 * (i % 4):02d}" for i in range(64)]

SEED = """
INSERT INTO courses (title, session_minutes) VALUES ('Soak', 15);
INSERT INTO trainers (name, email, max_students)
SELECT 'T' || t, 't' || t || '@soak.example', :capacity FROM generate_series(1, :trainers) t;
INSERT INTO trainer_courses (trainer_id, course_id) SELECT id, 1 FROM trainers;
INSERT INTO students (name, email, timezone)
SELECT 'S' || n, 's' || n || '@soak.example', 'Europe/Berlin' FROM generate_series(1, :n) n;
INSERT INTO payments (student_id, course_id, tier, time_slot, amount_cents, currency)
SELECT n, 1, 10, (:slots)[1 + (n - 1) % 64]::time, 9900, 'EUR' FROM generate_series(1, :n) n
"""

REPORT = {
    "payments": "SELECT count(*) FROM payments",
    "fulfilled": """SELECT count(*) FROM payments p
        JOIN student_course_purchases pu ON pu.payment_id = p.id
        JOIN trainer_allocations a ON a.purchase_id = pu.id AND a.status = 'active'
        WHERE (SELECT count(*) FROM tutoring_sessions t WHERE t.allocation_id = a.id) = 7""",
    "duplicate rows": """SELECT
        (SELECT count(*) FROM (SELECT payment_id FROM student_course_purchases
                               GROUP BY 1 HAVING count(*) > 1) d)
      + (SELECT count(*) FROM (SELECT purchase_id FROM trainer_allocations
                               GROUP BY 1 HAVING count(*) > 1) d)
      + (SELECT count(*) FROM (SELECT allocation_id, scheduled_date FROM tutoring_sessions
                               GROUP BY 1, 2 HAVING count(*) > 1) d)
      + (SELECT count(*) FROM (SELECT trainer_id, starts_at FROM tutoring_sessions
                               WHERE status <> 'cancelled' GROUP BY 1, 2 HAVING count(*) > 1) d)
      + (SELECT count(*) FROM trainers t WHERE t.active_students <> (SELECT count(*)
           FROM trainer_allocations a WHERE a.trainer_id = t.id
           AND a.status IN ('approved', 'active')))
      + (SELECT count(*) FROM (SELECT correlation_id FROM domain_events
           WHERE event_type = 'PURCHASE_CREATED' GROUP BY 1 HAVING count(*) > 1) d)""",
    "lost": """SELECT count(*) FROM payments p
        WHERE p.status IN ('confirming', 'succeeded')
        AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.correlation_id = p.id::text)
        AND (SELECT count(*) FROM student_course_purchases pu
             JOIN trainer_allocations a ON a.purchase_id = pu.id
             JOIN tutoring_sessions t ON t.allocation_id = a.id
             WHERE pu.payment_id = p.id) <> 7""",
}


def burst_env(database_url: str, redis_url: str, **more: str) -> dict[str, str]:
    """The environment of a burst's API, workers and Flower: one database, one Redis
    (broker and cache), recovery in seconds."""
    return {
        "DATABASE_URL": database_url,
        "BROKER_URL": redis_url,
        "CACHE_URL": redis_url,
        **FAST_RECOVERY,
        **more,
    }


def pay_at_the_provider(
    payment_ids: list[str], database_url: str, provider_base: str | None = None
) -> None:
    """Each payment gets a PaymentIntent for its amount, paid with the test card (at the
    sandbox at `provider_base`, else the configured one)."""
    settings_now = get_settings()
    if provider_base is not None:
        settings_now = dataclasses.replace(settings_now, stripe_api_base=provider_base)
    provider = bootstrap(settings_now).provider
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")

    def pay(payment_id: str) -> tuple[str, str]:
        intent = provider.create_intent(amount_cents=9900, currency="EUR", payment_id=payment_id)
        provider.client.v1.payment_intents.confirm(
            intent.id, params={"payment_method": "pm_card_visa"}
        )
        return payment_id, intent.id

    with ThreadPoolExecutor(8) as pool, engine.connect() as connection:
        for payment_id, intent_id in pool.map(pay, payment_ids):
            connection.execute(
                text("UPDATE payments SET provider_payment_id = :intent WHERE id = :id"),
                {"intent": intent_id, "id": payment_id},
            )
    engine.dispose()


def prepare(payments: int, database_url: str, provider_base: str | None = None) -> list[str]:
    """A fresh database at `database_url` with `payments` students who paid at the
    provider and have yet to say so: their payment ids."""
    rebuild_database(database_url)
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        params = {
            "n": payments,
            "capacity": CAPACITY,
            "trainers": payments // CAPACITY + 2,
            "slots": SLOTS,
        }
        for statement in SEED.split(";"):
            connection.execute(text(statement), params)
        # Quarter-hour sessions, trainers who work around the clock: the 64 slots
        # (06:00 to 21:45 Berlin) fit one trainer's day.
        connection.execute(hours_for_all_trainers())
        ids = connection.scalars(text("SELECT id::text FROM payments ORDER BY student_id")).all()
    engine.dispose()
    pay_at_the_provider(list(ids), database_url, provider_base)
    return list(ids)


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One confirm request: when it was sent and answered (monotonic seconds), and its
    status (0: no answer, a timeout or a refused connection)."""

    payment_id: str
    started: float
    finished: float
    status: int


class Confirming(threading.Thread):
    """Every payment confirmed over HTTP at `api_base` (as the admin), 8 at a time, in
    the background; `answers` holds each payment's last status code, `attempts` every
    request. With `per_second`, the confirms are spread at that rate (a burst that is
    still arriving when something fails); with `retry_unavailable`, a 503 is tried again
    after its Retry-After, as a client should (up to `MAX_TRIES` times)."""

    MAX_TRIES = 20

    def __init__(
        self,
        api_base: str,
        payment_ids: list[str],
        admin_token: str,
        *,
        per_second: float | None = None,
        retry_unavailable: bool = False,
    ) -> None:
        super().__init__(daemon=True)
        self.api_base, self.payment_ids = api_base, payment_ids
        self.headers = {"Authorization": f"Bearer {admin_token}"}
        self.per_second, self.retry_unavailable = per_second, retry_unavailable
        self.answers: list[int] = []
        self.attempts: list[Attempt] = []
        self.began = time.monotonic()
        self.start()

    def post(self, payment_id: str) -> tuple[int, float]:
        """The status, and the Retry-After of a 503 (1 s if none)."""
        url = f"{self.api_base}/api/v1/payments/{payment_id}/confirm"
        started = time.monotonic()
        try:
            answer = requests.post(url, json={}, headers=self.headers, timeout=30)
            status, wait = answer.status_code, float(answer.headers.get("Retry-After", 1))
        except requests.RequestException:
            status, wait = 0, 1.0
        self.attempts.append(Attempt(payment_id, started, time.monotonic(), status))
        return status, wait

    def confirm(self, numbered: tuple[int, str]) -> int:
        number, payment_id = numbered
        if self.per_second:
            time.sleep(max(0.0, self.began + number / self.per_second - time.monotonic()))
        for _ in range(self.MAX_TRIES if self.retry_unavailable else 1):
            status, wait = self.post(payment_id)
            if status != 503:
                break
            time.sleep(wait)
        return status

    def run(self) -> None:
        with ThreadPoolExecutor(8) as pool:
            self.answers.extend(pool.map(self.confirm, enumerate(self.payment_ids)))

    def answered_after(self, instant: float) -> list[Attempt]:
        """The requests sent after `instant` that were answered 202, first answered first."""
        found = [a for a in self.attempts if a.started >= instant and a.status == 202]
        return sorted(found, key=lambda a: a.finished)


def report(database_url: str) -> tuple[dict[str, int], Counter]:
    """The rows counted: payments, fulfilled, duplicate rows, lost; and the dead letters
    by reason."""
    engine = create_engine(database_url)
    with engine.connect() as connection:
        figures = {name: connection.scalar(text(sql)) for name, sql in REPORT.items()}
        by_reason = text(
            "SELECT task_name || ': ' || exception_type, count(*) FROM dead_letters GROUP BY 1"
        )
        reasons = Counter(dict(connection.execute(by_reason).all()))
    engine.dispose()
    return figures, reasons


def assert_exactly_once(database_url: str, payments: int) -> None:
    """Counted by rows: every payment fulfilled, none lost, nothing doubled, and no dead
    letter (nothing here is a business failure)."""
    figures, dead_letters = report(database_url)
    expected = {"payments": payments, "fulfilled": payments, "duplicate rows": 0, "lost": 0}
    assert figures == expected, figures
    assert not dead_letters, f"dead letters: {dict(dead_letters)}"
