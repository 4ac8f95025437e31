"""Session top-up over N active allocations (default 100,000): time and memory.

Every allocation has 5 past and 2 future hour-long sessions, so each needs 5 more. Each
trainer has 12 students (08:00 to 19:00, every hour, in the trainer's own time zone and
working hours, Monday to Friday 08:00 to 20:00): a full day, so the planner checks
working hours and booked intervals for real and the exclusion constraint has work to
do. Reference in the same run: one INSERT ... SELECT writing the same number of session
rows (under the same constraint) — the floor for getting that many rows into
tutoring_sessions.

    python -m bench.top_up [--allocations 100000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import resource
import time
from datetime import UTC, date, datetime
from datetime import time as dt_time

from sqlalchemy import text

import bench.common as common
from bootstrap import bootstrap
from domain.catalogue import hours_for_all_trainers
from domain.clock import install
from harness.clock import TravellingClock
from tasks.beat import run_top_up

celery_app = bootstrap().celery  # the bench settings (bench.common)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # a Wednesday
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney"]
PER_TRAINER = 12  # hour-long sessions, 08:00 to 20:00

SEED = """
INSERT INTO courses (title) VALUES ('Bench course');
INSERT INTO trainers (name, email, max_students, active_students, timezone)
SELECT 'T' || t, 't' || t || '@bench.example', :per_trainer, :per_trainer,
       (ARRAY[{zones}])[1 + (t - 1) % {zone_count}]
FROM generate_series(1, :trainers) t;
INSERT INTO trainer_courses (trainer_id, course_id) SELECT id, 1 FROM trainers;
INSERT INTO students (name, email, timezone)
SELECT 'S' || n, 's' || n || '@bench.example',
       (ARRAY[{zones}])[1 + ((n - 1) / :per_trainer) % {zone_count}]
FROM generate_series(1, :n) n;
INSERT INTO payments (student_id, course_id, tier, time_slot, amount_cents, currency, status,
                      provider_payment_id, confirmed_at)
SELECT n, 1, 30, time '08:00' + ((n - 1) % :per_trainer) * interval '1 hour', 100, 'EUR',
       'succeeded', 'pp' || n, now()
FROM generate_series(1, :n) n;
INSERT INTO student_course_purchases (payment_id, student_id, course_id, tier, time_slot)
SELECT id, student_id, course_id, tier, time_slot FROM payments;
INSERT INTO trainer_allocations (purchase_id, student_id, course_id, trainer_id, time_slot,
                                 sessions_total, status)
SELECT p.id, p.student_id, p.course_id, 1 + (p.student_id - 1) / :per_trainer, p.time_slot,
       30, 'active'
FROM student_course_purchases p;
"""

# One session per allocation on each of :dates: the seed's sessions, and the reference.
SESSIONS_ON = text(
    """
    INSERT INTO tutoring_sessions (allocation_id, student_id, trainer_id, scheduled_date,
                                   scheduled_time, starts_at, ends_at)
    SELECT a.id, a.student_id, a.trainer_id, d, a.time_slot,
           (d + a.time_slot) AT TIME ZONE s.timezone,
           (d + a.time_slot) AT TIME ZONE s.timezone + interval '1 hour'
    FROM trainer_allocations a
    JOIN students s ON s.id = a.student_id
    CROSS JOIN unnest(CAST(:dates AS date[])) d
    """
)
# 5 past and 2 future sessions each (Wed 18 .. Tue 24 Nov, Thu 26 .. Fri 27 Nov).
SEED_DATES = [date(2026, 11, d) for d in (18, 19, 20, 23, 24, 26, 27)]
REFERENCE_DATES = [date(2027, 3, d) for d in (1, 2, 3, 4, 5)]


def seed(allocations: int) -> None:
    zones = ", ".join(f"'{z}'" for z in ZONES)
    sql = SEED.format(zones=zones, zone_count=len(ZONES))
    params = {
        "n": allocations,
        "per_trainer": PER_TRAINER,
        "trainers": -(-allocations // PER_TRAINER),
    }
    with celery_app.database.engine.begin() as connection:
        # Seeding is not what is measured: no step's statement timeout applies to it.
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        for statement in filter(str.strip, sql.split(";")):
            connection.execute(text(statement), params)
        connection.execute(hours_for_all_trainers(dt_time(8), dt_time(20), range(5)))
        connection.execute(SESSIONS_ON, {"dates": SEED_DATES})
        connection.execute(text("ANALYZE"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--allocations", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()

    common.fresh_database()
    started = time.perf_counter()
    seed(args.allocations)
    print(f"seeded {args.allocations:,} allocations in {time.perf_counter() - started:.1f} s")

    install(TravellingClock(NOW))  # the application's time stands at NOW from here
    # Memory: peak RSS of this process (tracemalloc would slow the run several-fold).
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    report = run_top_up(celery_app, batch_size=args.batch)
    elapsed = time.perf_counter() - started
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    with celery_app.database.engine.begin() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        started = time.perf_counter()
        reference_rows = connection.execute(SESSIONS_ON, {"dates": REFERENCE_DATES}).rowcount
        reference = time.perf_counter() - started
        connection.rollback()

    print()
    print(
        common.table(
            ["what", "allocations", "sessions written", "seconds", "rows/s"],
            [
                [
                    f"top_up_sessions (batches of {args.batch})",
                    f"{report.allocations_seen:,}",
                    f"{report.sessions_created:,}",
                    f"{elapsed:.1f}",
                    f"{report.sessions_created / elapsed:,.0f}",
                ],
                [
                    "reference: one INSERT ... SELECT",
                    f"{args.allocations:,}",
                    f"{reference_rows:,}",
                    f"{reference:.1f}",
                    f"{reference_rows / reference:,.0f}",
                ],
            ],
        )
    )
    grew = (rss_after - rss_before) / 1024
    print(
        f"\nratio top-up / reference: {elapsed / reference:.2f}x; "
        f"peak RSS grew by {grew:.1f} MiB during the top-up"
    )


if __name__ == "__main__":
    main()
