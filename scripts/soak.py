"""Soak: N payments through the real stack while workers are SIGKILLed at random
intervals and Redis (AOF) is restarted once. Prints what happened and exits non-zero
on any duplicate or lost payment.

    python -m scripts.soak [--payments 2000] [--seed 7]

Everything runs on this machine against a database of its own (tutorflow_soak) and a
private redis-server; the shared services are never stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

os.environ["DATABASE_URL"] = os.environ.get(
    "SOAK_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/tutorflow_soak"
)

import requests
from sqlalchemy import create_engine, text
from werkzeug.serving import make_server

from app.cli import rebuild_database
from core.config import get_settings
from core.provider import PaymentProvider
from domain.catalogue import hours_for_all_trainers
from harness.processes import api_server, celery_worker, private_redis, wait_until
from sandbox.app import SandboxConfig, create_sandbox

settings = get_settings()
ADMIN = {"Authorization": f"Bearer {settings.admin_token}"}

CAPACITY = 50
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


def start_provider(address: str = "127.0.0.1") -> str:
    """The provider sandbox in a thread of this process, listening on `address`: its
    base URL."""
    server = make_server(address, 0, create_sandbox(SandboxConfig()), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://{address}:{server.port}"


def pay_at_the_provider(
    payment_ids: list[str], database_url: str, provider_base: str | None = None
) -> None:
    """Each payment gets a PaymentIntent for its amount, paid with the test card (at the
    sandbox at `provider_base`, else the configured one)."""
    settings_now = get_settings()
    if provider_base is not None:
        settings_now = dataclasses.replace(settings_now, stripe_api_base=provider_base)
    provider = PaymentProvider.for_settings(settings_now)
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


def prepare(
    payments: int, database_url: str | None = None, provider_base: str | None = None
) -> list[str]:
    """A fresh database with `payments` students who paid at the provider and have yet
    to say so (the soak's own database unless `database_url`): their payment ids."""
    database_url = database_url or settings.database_url
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


def report(database_url: str | None = None) -> tuple[dict[str, int], Counter]:
    """The rows counted: payments, fulfilled, dead-lettered, duplicate rows, lost; and
    the dead letters by reason."""
    engine = create_engine(database_url or settings.database_url)
    with engine.connect() as connection:
        figures = {name: connection.scalar(text(sql)) for name, sql in REPORT.items()}
        by_reason = text(
            "SELECT task_name || ': ' || exception_type, count(*) FROM dead_letters GROUP BY 1"
        )
        reasons = Counter(dict(connection.execute(by_reason).all()))
    engine.dispose()
    return figures, reasons


def run(payments: int, seed: int, timeout: float) -> int:
    rng = random.Random(seed)
    os.environ["STRIPE_API_BASE"] = start_provider()
    get_settings.cache_clear()  # read again: the provider's address is known now
    payment_ids = prepare(payments)
    kills: Counter = Counter()
    with private_redis(aof=True) as broker:
        env = {
            "DATABASE_URL": settings.database_url,
            "BROKER_URL": broker.url,
            "STRIPE_API_BASE": os.environ["STRIPE_API_BASE"],
            "CACHE_URL": broker.url,
            # Recovery in seconds: the visibility timeout above the task time limit
            # plus the longest retry countdown (celeryconfig.check_delivery_settings).
            "CELERY_VISIBILITY_TIMEOUT": "10",
            "CELERY_TASK_TIME_LIMIT": "4",
            "CELERY_RETRY_BACKOFF_MAX": "4",
            "PROVIDER_RETRY_BACKOFF_MAX": "4",
            "PIPELINE_STALL_SECONDS": "20",
            "OUTBOX_RELAY_INTERVAL_SECONDS": "1",
            "OUTBOX_RELAY_GRACE_SECONDS": "2",
            "RATE_LIMIT_PUBLIC": "1000000/minute",
        }
        os.environ.update(env)
        with api_server(env) as api:
            # Supervised: a worker that exits on its own is restarted, as in production.
            worker_box = [celery_worker(env=env, beat=True, supervise=True)]
            worker = worker_box[0].__enter__()
            done = threading.Event()
            http = requests.Session()

            def confirm(payment_id: str) -> int:
                for _ in range(20):  # a client retries a 5xx or a refused connection
                    try:
                        response = http.post(
                            f"{api.base}/api/v1/payments/{payment_id}/confirm",
                            json={},
                            headers=ADMIN,
                            timeout=10,
                        )
                        if response.status_code < 500:
                            return response.status_code
                    except requests.RequestException:
                        pass
                    time.sleep(0.5)
                return 0

            def chaos() -> None:
                nonlocal worker
                restarted_redis = False
                while not done.wait(rng.uniform(2, 6)):
                    if not restarted_redis and rng.random() < 0.3:
                        broker.restart()
                        kills["redis restart"] += 1
                        restarted_redis = True
                    elif rng.random() < 0.7:
                        children = [
                            int(p)
                            for p in os.popen(f"pgrep -P {worker.process.pid}").read().split()
                        ]
                        if children:
                            os.kill(rng.choice(children), signal.SIGKILL)
                            kills["pool child SIGKILL"] += 1
                    else:
                        worker.kill()
                        kills["whole worker SIGKILL"] += 1
                        worker_box[0].__exit__(None, None, None)
                        worker_box[0] = celery_worker(env=env, beat=True, supervise=True)
                        worker = worker_box[0].__enter__()
                if not restarted_redis:
                    broker.restart()
                    kills["redis restart"] += 1

            chaos_thread = threading.Thread(target=chaos, daemon=True)
            started = time.monotonic()
            chaos_thread.start()
            with ThreadPoolExecutor(8) as pool:
                statuses = Counter(pool.map(confirm, payment_ids))
            confirmed_in = time.monotonic() - started

            def settled() -> bool:
                figures, reasons = report()
                return figures["fulfilled"] + sum(reasons.values()) >= payments

            with contextlib.suppress(AssertionError):  # the report says what did not settle
                wait_until(settled, timeout, "soak did not settle")
            done.set()
            chaos_thread.join(60)
            elapsed = time.monotonic() - started
            worker_box[0].__exit__(None, None, None)
    figures, reasons = report()
    print(f"confirm answers: {dict(statuses)} in {confirmed_in:.1f} s; chaos: {dict(kills)}")
    print(f"payments        {figures['payments']}")
    print(f"fulfilled       {figures['fulfilled']}")
    print(f"dead-lettered   {sum(reasons.values())}")
    for reason, count in reasons.most_common():
        print(f"  {count:>5}  {reason}")
    print(f"duplicate rows  {figures['duplicate rows']}")
    print(f"lost            {figures['lost']}")
    print(f"settled in      {elapsed:.1f} s")
    return 1 if figures["duplicate rows"] or figures["lost"] else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payments", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    sys.exit(run(args.payments, args.seed, args.timeout))


if __name__ == "__main__":
    main()
