"""Cost as the data grows (issue 25): the confirm, the home read, availability and the
top-up on a near-empty database and on one holding 1,000,000 sessions, 100,000
allocations and 1,000 trainers, side by side in one run, against "within 1.2x".

Two databases, both rebuilt by the migrations at every run (unless --skip-seed), both
seeded by bench.availability's loader (the same 1,010 trainers in five zones, their
working hours, two courses, 8 live allocations a trainer with their past and coming
sessions, live and expired checkout holds):

- seed: that loader's live seed alone (`--allocations` at its minimum, 9,090: the 8,080
  live ones and one finished one a trainer, whose students hold the checkouts): what
  the trainers are booked for now, next to no history. With `--base catalogue`, the
  catalogue alone instead (no student, payment, allocation, session or hold):
  availability then has no booking to read and its figures say little.
- loaded: the loader's whole seed: the rest of `--allocations` finished (completed or
  cancelled) history with 10 past sessions each, about 1,000,000 sessions in all.

In both, every payment then gets what the chain leaves behind for it: its timeline
(5 domain events) and its checkout hold, converted.

Both then get the same probe rows, written by the same SQL: a probe course taught by
100 probe trainers (Monday to Friday 08:00-20:00 in their zones), 10 active allocations
each (tier 30, 5 past and 2 future sessions: each due 5 more at the top-up), one more
active allocation whose student's home is read (5 past, 7 coming), and one student
with the pending payments the confirms use. The two databases then hold the same
active allocations: what the paths do is the same; only the data around it differs.

A shared machine's noise would swamp a ratio of two runs taken one after the other, so
the two databases are measured side by side:

- in this process, each path's calls alternate between them (`--calls` each, a fifth
  of that for course 1's availability):
  confirm (actions.payments.confirm: its transaction, commit and publish), the home
  read model (student_home), availability (offers, cold: no calendar snapshot; tier
  30, Europe/Berlin; course 1 with its 1,000 trainers, course 2 with 10), the
  catalogue's GET /courses/1 read (get_course), and the beat's top-up as one pass
  over every active allocation (domain.top_up.top_up_batch from id 0, batches of
  TOP_UP_BATCH_SIZE, in a transaction rolled back afterwards: `--top-up-runs`),
  reported per active allocation the pass sees;
- over HTTP, a gunicorn on each database (the project's gunicorn.conf.py,
  bench.reference_wsgi:app) and `--connections` threads (one by default), each sending
  to both in turn for `--seconds`, which one first alternating:
  POST /api/v1/payments/{id}/confirm (a fresh pending payment each, as
  bench.confirm_api), GET /api/v1/students/{id}/home (the cached read model: a Redis
  hit) and the same read model built from PostgreSQL on every request
  (/bench/ref/home-uncached: what a miss costs).

The clock of this process stands at bench.availability.NOW (Wednesday 3 March 2027,
12:00 UTC); gunicorn runs on the real clock (the confirm's and the home's statements
do not depend on it). Then every statement each path sends is captured as the driver
sends it and run again under EXPLAIN (ANALYZE, BUFFERS) on both databases (in a
transaction rolled back): buffers touched (which do not move with the machine's load as
times do), time, the indexes and sequential scans of each statement are printed, the
loaded database's plans written to `--plans` (bench/profiles/volume-plans.txt).

    python -m bench.volume [--allocations 100000] [--rounds 1] [--seconds 10]
        [--connections 1] [--calls 30] [--base live|catalogue] [--skip-seed]
        [--same-database]

`--same-database` puts both sides on the seed database (the columns keep their names):
what the harness alone makes of two identical stores. With one connection an HTTP figure
is a request's own time, and between identical stores it read 0.88-1.06x (best round);
with eight, the two gunicorns' queues on two cores made it (0.78-1.65x, and 0.45-2.2x in
single rounds), so more connections measure the machine's scheduling, not the data's
cost: latency under load is bench.knee's.
"""

from __future__ import annotations

import os

# A database (and its "_seed" twin) and a Redis db of their own.
os.environ.setdefault(
    "DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/tutorflow_bench_volume"
)
os.environ.setdefault("BROKER_URL", "redis://127.0.0.1:6379/14")

import argparse
import dataclasses
import http.client
import re
import statistics
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date
from datetime import time as dt_time
from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

import bench.availability as loader
import bench.common as common
from actions import payments
from bootstrap import bootstrap
from core.config import Settings
from domain import availability
from domain.catalogue import hours_for_all_trainers
from domain.clock import install
from domain.payments import request_confirmation
from domain.read_models import get_course, student_home
from domain.top_up import TopUpReport, top_up_batch
from harness.clock import TravellingClock
from harness.database import rebuild_database
from harness.processes import api_server
from models import Database

NOW = loader.NOW
GOAL = 1.2
PROBE_TRAINERS = 100
PROBE_PER_TRAINER = 10  # top-up probes per probe trainer, at 08:00 .. 17:00
PAST = [date(2027, 2, d) for d in (24, 25, 26)] + [date(2027, 3, 1), date(2027, 3, 2)]
COMING = [date(2027, 3, d) for d in (4, 5, 8, 9, 10, 11, 12)]
TIMELINE = [
    "PAYMENT_CONFIRMATION_REQUESTED",
    "PAYMENT_VERIFIED",
    "PURCHASE_CREATED",
    "TRAINER_ALLOCATED",
    "SESSIONS_GENERATED",
]
PLANS = common.ROOT / "bench" / "profiles" / "volume-plans.txt"

# What the chain leaves behind for every payment of the loader's seed: its timeline and
# its checkout hold, turned into the allocation.
AFTERMATH = """
INSERT INTO domain_events (correlation_id, student_id, event_type, payload, occurred_at)
SELECT p.id, p.student_id, e.kind, jsonb_build_object('source', 'bench'),
       p.confirmed_at + e.n * interval '1 second'
FROM payments p
CROSS JOIN unnest(CAST(:kinds AS text[])) WITH ORDINALITY AS e(kind, n);
INSERT INTO holds (payment_id, student_id, course_id, trainer_id, time_slot, timezone,
                   session_minutes, sessions, starts_after, status, expires_at)
SELECT p.id, p.student_id, p.course_id, a.trainer_id, p.time_slot, s.timezone, 60, p.tier,
       CAST(p.confirmed_at AS date), 'converted', p.confirmed_at
FROM payments p
JOIN student_course_purchases u ON u.payment_id = p.id
JOIN trainer_allocations a ON a.purchase_id = u.id
JOIN students s ON s.id = p.student_id
"""

# The probe rows, the same in both databases (:course is the probe course's id).
PROBES = """
INSERT INTO trainers (name, email, max_students, active_students, timezone)
SELECT 'P' || t, 'p' || t || '@probe.example', :per_trainer + 2, 0,
       (ARRAY[{zones}])[1 + (t - 1) % {zone_count}]
FROM generate_series(1, :trainers) t;
INSERT INTO trainer_courses (trainer_id, course_id)
SELECT id, :course FROM trainers WHERE email LIKE '%@probe.example';
CREATE TEMPORARY TABLE probe ON COMMIT DROP AS
SELECT row_number() OVER (ORDER BY t.id, k) AS n, t.id AS trainer_id, t.timezone,
       make_time(8 + k, 0, 0) AS slot, k = :per_trainer AS home,
       CAST(NULL AS bigint) AS student_id
FROM trainers t CROSS JOIN generate_series(0, :per_trainer) k
WHERE t.email LIKE '%@probe.example'
  AND (k < :per_trainer
       OR t.id = (SELECT min(id) FROM trainers WHERE email LIKE '%@probe.example'));
INSERT INTO students (name, email, timezone)
SELECT 'Probe ' || n, 'probe' || n || '@probe.example', timezone FROM probe ORDER BY n;
UPDATE probe SET student_id = s.id FROM students s
WHERE s.email = 'probe' || probe.n || '@probe.example';
INSERT INTO payments (student_id, course_id, tier, time_slot, amount_cents, currency, status,
                      provider_payment_id, confirmed_at)
SELECT student_id, :course, 30, slot, 100, 'EUR', 'succeeded', 'probe-' || n, :now
FROM probe ORDER BY n;
INSERT INTO student_course_purchases (payment_id, student_id, course_id, tier, time_slot)
SELECT p.id, p.student_id, p.course_id, p.tier, p.time_slot
FROM payments p JOIN probe ON probe.student_id = p.student_id ORDER BY probe.n;
INSERT INTO trainer_allocations (purchase_id, student_id, course_id, trainer_id, time_slot,
                                 sessions_total, status)
SELECT u.id, u.student_id, u.course_id, probe.trainer_id, u.time_slot, 30, 'active'
FROM student_course_purchases u JOIN probe ON probe.student_id = u.student_id
ORDER BY probe.n;
INSERT INTO tutoring_sessions (allocation_id, student_id, trainer_id, scheduled_date,
                               scheduled_time, starts_at, ends_at, status)
SELECT a.id, a.student_id, a.trainer_id, w.day, a.time_slot,
       (w.day + a.time_slot) AT TIME ZONE probe.timezone,
       (w.day + a.time_slot) AT TIME ZONE probe.timezone + interval '1 hour',
       CASE WHEN w.day < :today THEN 'completed' ELSE 'scheduled' END
FROM trainer_allocations a
JOIN probe ON probe.student_id = a.student_id
CROSS JOIN unnest(CAST(:days AS date[])) WITH ORDINALITY AS w(day, i)
WHERE w.i <= CASE WHEN probe.home THEN :home_days ELSE :top_up_days END;
UPDATE trainers t SET active_students = (
    SELECT count(*) FROM trainer_allocations a WHERE a.trainer_id = t.id AND a.status = 'active')
WHERE t.email LIKE '%@probe.example'
"""


@dataclass
class Store:
    """One of the two databases, what the run measures in it, and its figures."""

    name: str
    settings: Settings
    database: Database
    probe_course: int = 0
    home_student: int = 0
    home_token: str = ""
    payer: int = 0
    payer_token: str = ""
    payments: deque[str] = field(default_factory=deque)  # pending, the payer's
    port: int = 0  # its gunicorn's
    top_up_seen: int = 0  # active allocations a top-up pass sees
    # figure -> one value per round
    figures: dict[str, list[float]] = field(default_factory=dict)

    def add(self, figure: str, value: float) -> None:
        self.figures.setdefault(figure, []).append(value)

    def take(self) -> str:
        """A pending payment not confirmed yet (deque.popleft: safe across threads)."""
        return self.payments.popleft()


def store(name: str, url: str) -> Store:
    settings = dataclasses.replace(common.settings, database_url=url)
    return Store(name, settings, bootstrap(settings).worker_database)


def seed_url(url: str) -> str:
    """The seed database's: the loaded one's name with "_seed"."""
    parsed = make_url(url)
    return parsed.set(database=f"{parsed.database}_seed").render_as_string(hide_password=False)


# --- seeding -----------------------------------------------------------------------------


def seed(stores: tuple[Store, Store], trainers: int, allocations: int, base: str) -> None:
    for each in stores:
        started = time.perf_counter()
        rebuild_database(each.settings.database_url)
        if each.name == "loaded" or base == "live":
            size = allocations if each.name == "loaded" else loader.minimum_allocations(trainers)
            counts = loader.seed(trainers, size, engine=each.database.engine)
        else:
            counts = loader.seed(trainers, 0, engine=each.database.engine, catalogue_only=True)
        with each.database.engine.begin() as connection:
            connection.execute(text("SET LOCAL statement_timeout = 0"))
            for statement in filter(str.strip, AFTERMATH.split(";")):
                connection.execute(text(statement), {"kinds": TIMELINE})
        seed_probes(each)
        print(
            f"{each.name}: seeded in {time.perf_counter() - started:.0f} s: "
            + ", ".join(f"{v:,} {k}" for k, v in counts.items())
        )


def seed_probes(each: Store) -> None:
    zones = ", ".join(f"'{z}'" for z in loader.ZONES)
    params = {
        "trainers": PROBE_TRAINERS,
        "per_trainer": PROBE_PER_TRAINER,
        "now": NOW,
        "today": NOW.date(),
        "days": PAST + COMING,
        "home_days": len(PAST) + len(COMING),
        "top_up_days": len(PAST) + 2,
    }
    with each.database.engine.begin() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        params["course"] = connection.scalar(
            text(
                "INSERT INTO courses (title, session_minutes) VALUES ('Probe course', 60) "
                "RETURNING id"
            )
        )
        sql = PROBES.format(zones=zones, zone_count=len(loader.ZONES))
        for statement in filter(str.strip, sql.split(";")):
            connection.execute(text(statement), params)
        connection.execute(hours_for_all_trainers(dt_time(8), dt_time(20), range(5)))
    with each.database.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))


def find_probes(each: Store, confirms: int) -> None:
    """The probe rows' ids, and `confirms` fresh pending payments of a new student."""
    with each.database.engine.connect() as connection:
        each.probe_course = connection.scalar(
            text("SELECT id FROM courses WHERE title = 'Probe course'")
        )
        each.home_student = connection.scalar(
            text(
                "SELECT student_id FROM trainer_allocations WHERE course_id = :course "
                "AND time_slot = :slot"
            ),
            {"course": each.probe_course, "slot": dt_time(8 + PROBE_PER_TRAINER)},
        )
    each.payer, ids = common.seed_one_students_payments(
        each.probe_course, confirms, each.database.engine
    )
    each.payments = deque(str(i) for i in ids)
    each.payer_token = common.student_token(each.payer)
    each.home_token = common.student_token(each.home_student)


def describe(each: Store) -> str:
    with each.database.engine.connect() as connection:
        counts = [
            connection.scalar(text(f"SELECT count(*) FROM {table}"))
            for table in ("trainers", "trainer_allocations", "tutoring_sessions", "payments")
        ]
        events = connection.scalar(text("SELECT count(*) FROM domain_events"))
        size = connection.scalar(
            text("SELECT pg_size_pretty(pg_database_size(current_database()))")
        )
    trainers, allocations, sessions, payments = counts
    return (
        f"{each.name}: {trainers:,} trainers, {allocations:,} allocations, {sessions:,} sessions, "
        f"{payments:,} payments, {events:,} domain events; {size}"
    )


# --- the measured paths ------------------------------------------------------------------


def offers_call(each: Store, course_id: int) -> Callable[[], object]:
    def call() -> object:
        with each.database.transaction() as session:
            return availability.offers(
                session, course_id=course_id, timezone="Europe/Berlin", tier=30, now=NOW
            )

    return call


def course_call(each: Store) -> Callable[[], object]:
    """GET /courses/{id}'s read: the course and whether a trainer has a place left."""

    def call() -> object:
        with each.database.transaction() as session:
            return get_course(session, 1).purchasable

    return call


def top_up(session: Session, each: Store) -> TopUpReport:
    """The beat job's pass (tasks.beat.run_top_up, one shard): every active allocation,
    in batches of TOP_UP_BATCH_SIZE, in the caller's transaction."""
    settings, report, after = each.settings, TopUpReport(), 0
    while True:
        batch, last = top_up_batch(
            session,
            now=NOW,
            after_id=after,
            limit=settings.top_up_batch_size,
            window=settings.session_window,
            threshold=settings.top_up_threshold,
        )
        report.add(batch)
        if last is None:
            return report
        after = last


def top_up_call(each: Store) -> Callable[[], object]:
    """A whole pass, rolled back (the next run finds the same allocations due)."""

    def call() -> object:
        with each.database.sessions() as session, session.begin():
            report = top_up(session, each)
            session.rollback()
        if report.allocations_topped_up != PROBE_TRAINERS * PROBE_PER_TRAINER:
            raise RuntimeError(f"{each.name}: the top-up did {report}, expected every probe")
        each.top_up_seen = report.allocations_seen
        return report

    return call


def vacuum_sessions(each: Store) -> None:
    """Clear what a rolled-back pass left: dead session rows, and their entries in the
    indexes the next pass reads. INDEX_CLEANUP ON: by default VACUUM leaves the indexes
    alone when the dead rows sit in under 2 % of the table's pages, which is so in the
    loaded database only, and the loaded passes would read thousands of dead entries."""
    with each.database.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(
            text("VACUUM (INDEX_CLEANUP ON) tutoring_sessions")
        )


def confirm_call(each: Store) -> Callable[[], object]:
    database = bootstrap(each.settings).api_database

    def call() -> object:
        return payments.confirm(
            database,
            uuid.UUID(each.take()),
            student_id=each.payer,
            source="client",
            hold_minutes=each.settings.hold_minutes,
        )

    return call


def home_call(each: Store) -> Callable[[], object]:
    def call() -> object:
        with each.database.transaction() as session:
            return student_home(session, each.home_student, now=NOW)

    return call


def interleaved(
    stores: tuple[Store, Store],
    make: Callable[[Store], Callable[[], object]],
    runs: int,
    after: Callable[[Store], None] | None = None,
) -> dict[str, list[float]]:
    """Milliseconds of `runs` calls a store, the stores' calls in turn (which goes first
    alternates), after one warm-up call each; `after` runs after each call, untimed."""
    calls = {each.name: (each, make(each)) for each in stores}
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    for run in range(-1, runs):  # -1: the warm-up
        for name in order if run % 2 == 0 else order[::-1]:
            each, call = calls[name]
            started = time.perf_counter()
            call()
            if run >= 0:
                times[name].append((time.perf_counter() - started) * 1000)
            if after is not None:
                after(each)
    return times


# (label, the call, the share of --calls it makes: a call of course 1's offers takes
# a hundred of the others)
IN_PROCESS: list[tuple[str, Callable[[Store], Callable[[], object]], float]] = [
    ("confirm: the action (actions.payments.confirm)", confirm_call, 1),
    ("home: the read model (student_home)", home_call, 1),
    ("availability: offers, course 1 (1,000 trainers)", lambda each: offers_call(each, 1), 0.2),
    ("availability: offers, course 2 (10 trainers)", lambda each: offers_call(each, 2), 1),
    ("catalogue: GET /courses/1's read (get_course)", course_call, 1),
]


def measure_in_process(stores: tuple[Store, Store], calls: int, top_up_runs: int) -> None:
    for label, make, share in IN_PROCESS:
        times = interleaved(stores, make, max(5, round(calls * share)))
        for each in stores:
            each.add(f"{label} p50 ms", common.percentile(times[each.name], 50))
            each.add(f"{label} p95 ms", common.percentile(times[each.name], 95))
    times = interleaved(stores, top_up_call, top_up_runs, after=vacuum_sessions)
    for each in stores:
        per = [t / each.top_up_seen for t in times[each.name]]
        each.add("top-up: a whole pass, ms per active allocation (median)", statistics.median(per))


def http_ab(
    stores: tuple[Store, Store],
    request: Callable[[Store], tuple[str, str, str]],
    seconds: float,
    connections: int,
) -> dict[str, list[float]]:
    """A closed loop on both stores' gunicorns at once: each of `connections` threads
    keeps a connection to each and sends its requests to them in turn, so both see the
    same machine at the same moments; milliseconds per request, by store."""
    lock = threading.Lock()
    times: dict[str, list[float]] = {each.name: [] for each in stores}
    errors: list[str] = []
    stop_at = time.monotonic() + seconds

    def loop(index: int) -> None:
        opened = {
            each.name: http.client.HTTPConnection(common.HOST, each.port, timeout=30)
            for each in stores
        }
        turn = index
        try:
            while time.monotonic() < stop_at:
                turn += 1  # which store goes first alternates, as in `interleaved`
                for each in stores if turn % 2 == 0 else stores[::-1]:
                    method, path, token = request(each)
                    started = time.perf_counter()
                    status, _ = common.send(
                        opened[each.name], method, path, {} if method == "POST" else None, token
                    )
                    elapsed = (time.perf_counter() - started) * 1000
                    with lock:
                        times[each.name].append(elapsed)
                        if status >= 400:
                            errors.append(f"{each.name} {method} {path}: {status}")
        finally:
            for connection in opened.values():
                connection.close()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, the first: {errors[0]}")
    return times


def confirm_request(each: Store) -> tuple[str, str, str]:
    return "POST", f"/api/v1/payments/{each.take()}/confirm", each.payer_token


def home_request(path: str) -> Callable[[Store], tuple[str, str, str]]:
    def request(each: Store) -> tuple[str, str, str]:
        return "GET", path.format(id=each.home_student), each.home_token

    return request


HTTP = [
    ("confirm: POST /payments/{id}/confirm", confirm_request),
    ("home: GET /students/{id}/home (cached)", home_request("/api/v1/students/{id}/home")),
    (
        "home: built from PostgreSQL (a miss, /bench/ref/home-uncached)",
        home_request("/bench/ref/home-uncached/{id}"),
    ),
]


def measure_http(stores: tuple[Store, Store], seconds: float, connections: int) -> None:
    for label, request in HTTP:
        times = http_ab(stores, request, seconds, connections)
        for each in stores:
            each.add(f"{label} p50 ms", common.percentile(times[each.name], 50))
            each.add(f"{label} p99 ms", common.percentile(times[each.name], 99))
            each.add(f"{label} requests", len(times[each.name]))


# --- plans -------------------------------------------------------------------------------


@dataclass
class Sent:
    template: str  # as SQLAlchemy compiled it: the statement's shape
    sql: str  # as the driver sent it, values in


@contextmanager
def captured(each: Store) -> Iterator[list[Sent]]:
    """The statements sent on the store's engine meanwhile."""
    statements: list[Sent] = []

    def hook(_conn, cursor, statement, parameters, _context, executemany) -> None:
        if executemany:
            parameters = parameters[0] if parameters else None
        if re.match(r"\s*(WITH|SELECT|INSERT|UPDATE|DELETE)\b", statement, re.I):
            statements.append(Sent(statement, cursor.mogrify(statement, parameters).decode()))

    event.listen(each.database.engine, "before_cursor_execute", hook)
    try:
        yield statements
    finally:
        event.remove(each.database.engine, "before_cursor_execute", hook)


def path_statements(each: Store) -> dict[str, list[Sent]]:
    """Each path run once in a transaction rolled back, its statements captured."""
    payment = uuid.UUID(each.take())
    paths: dict[str, Callable[[Session], object]] = {
        "confirm": lambda session: request_confirmation(
            session, payment, student_id=each.payer, source="client", hold_minutes=15
        ),
        "home": lambda session: student_home(session, each.home_student, now=NOW),
        "availability": lambda session: availability.offers(
            session, course_id=1, timezone="Europe/Berlin", tier=30, now=NOW
        ),
        "catalogue": lambda session: get_course(session, 1),
        "top-up": lambda session: top_up(session, each),
    }
    found = {}
    for name, run in paths.items():
        with each.database.sessions() as session, session.begin(), captured(each) as statements:
            run(session)
            session.rollback()
        found[name] = statements
    return found


INDEX = re.compile(r"(?:Index Scan|Index Only Scan)(?: Backward)? using (\S+) on (\S+)")
BITMAP = re.compile(r"Bitmap Index Scan on (\S+)")
SEQ = re.compile(r"Seq Scan on (\S+)")
TIME = re.compile(r"Execution Time: ([\d.]+) ms")
BUFFERS = re.compile(r"Buffers: shared((?: \w+=\d+)+)")


@dataclass
class Plan:
    sent: Sent
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def indexes(self) -> set[str]:
        return {name for name, _ in INDEX.findall(self.text)} | set(BITMAP.findall(self.text))

    @property
    def seq_scans(self) -> set[str]:
        return set(SEQ.findall(self.text))

    @property
    def ms(self) -> float:
        match = TIME.search(self.text)
        return float(match.group(1)) if match else float("nan")

    @property
    def buffers(self) -> int:
        """Shared buffers the statement touched (hit or read): its top node's count,
        which does not move with the machine's load as its time does."""
        match = BUFFERS.search(self.text)
        if match is None:
            return 0
        counts = dict(part.split("=") for part in match.group(1).split())
        return int(counts.get("hit", 0)) + int(counts.get("read", 0))


def explain(each: Store, statements: list[Sent]) -> list[Plan]:
    """EXPLAIN (ANALYZE, BUFFERS) of each statement, in order, in one transaction that
    is rolled back (the writes then find what the path's earlier statements wrote)."""
    connection = each.database.engine.raw_connection()
    plans = []
    try:
        cursor = connection.cursor()
        cursor.execute("SET LOCAL statement_timeout = 0")
        for sent in statements:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sent.sql)
            plans.append(Plan(sent, [row[0] for row in cursor.fetchall()]))
    finally:
        connection.rollback()
        connection.close()
    return plans


def cut(text: str, length: int) -> str:
    """Long id lists and arrays shortened."""
    return text if len(text) <= length else text[:length] + " ... (cut)"


def write_plans(stores: tuple[Store, Store], path: Path) -> dict[str, dict[str, list[Plan]]]:
    """Both stores' plans (the loaded one's in full in `path`), by store and path."""
    found = {
        each.name: {name: explain(each, sent) for name, sent in path_statements(each).items()}
        for each in stores
    }
    loaded = stores[1]
    parts = [
        f"EXPLAIN (ANALYZE, BUFFERS) of every statement each path sends, on the {loaded.name} "
        f"database ({describe(loaded)}); bench/volume.py, clock at {NOW:%Y-%m-%d %H:%M} UTC.",
        "",
    ]
    for name, plans in found[loaded.name].items():
        parts += [f"=== {name}: {len(plans)} statements", ""]
        for number, plan in enumerate(plans, 1):
            lines = [cut(line, 300) for line in plan.lines]
            parts += [f"--- {number}. {cut(plan.sent.sql, 1500)}", "", *lines, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return found


def shape(sql: str) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= 70 else flat[:67] + "..."


def plan_summary(stores: tuple[Store, Store], found: dict[str, dict[str, list[Plan]]]) -> str:
    """Per path and statement shape (a batch's statements summed): how many ran, their
    buffers and time on each store, and the loaded store's indexes and sequential scans."""
    base, loaded = (found[each.name] for each in stores)
    rows: list[list[object]] = []
    for name, plans in loaded.items():
        shapes: dict[str, list[Plan]] = {}
        for plan in plans:
            shapes.setdefault(plan.sent.template, []).append(plan)
        base_shapes: dict[str, list[Plan]] = {}
        for plan in base[name]:
            base_shapes.setdefault(plan.sent.template, []).append(plan)
        for template, group in shapes.items():
            others = base_shapes.get(template, [])
            buffers = (sum(p.buffers for p in others), sum(p.buffers for p in group))
            ratio = buffers[1] / buffers[0] if buffers[0] else float("nan")
            rows.append(
                [
                    name,
                    shape(group[0].sent.sql),
                    f"{len(others)} / {len(group)}",
                    f"{buffers[0]:,} / {buffers[1]:,}",
                    f"{ratio:.2f}x",
                    f"{sum(p.ms for p in others):.1f} / {sum(p.ms for p in group):.1f}",
                    ", ".join(sorted(set().union(*(p.indexes for p in group)))) or "-",
                    ", ".join(sorted(set().union(*(p.seq_scans for p in group)))) or "-",
                ]
            )
    names = f"{stores[0].name} / {stores[1].name}"
    return common.table(
        [
            "path",
            "statement",
            f"runs {names}",
            f"buffers {names}",
            "buffers loaded / seed",
            f"ms {names}",
            "indexes used (loaded)",
            "seq scans (loaded)",
        ],
        rows,
    )


# --- the report --------------------------------------------------------------------------


def number(value: float) -> str:
    return f"{value:,.3f}" if value < 1 else f"{value:,.1f}"


def report(stores: tuple[Store, Store]) -> dict[str, float]:
    base, loaded = stores
    rows: list[list[object]] = []
    figures: dict[str, float] = {}
    for figure, values in base.figures.items():
        best_base, best_loaded = min(values), min(loaded.figures[figure])
        counted = figure.endswith("requests")
        ratio = best_loaded / best_base
        rows.append(
            [
                figure,
                number(best_base),
                number(best_loaded),
                "" if counted else f"{ratio:.2f}x",
                "" if counted else "met" if ratio <= GOAL else "NOT met",
            ]
        )
        if not counted:
            figures[f"{figure} {base.name}"] = round(best_base, 3)
            figures[f"{figure} {loaded.name}"] = round(best_loaded, 3)
            figures[f"{figure} ratio"] = round(ratio, 3)
    rounds = len(next(iter(base.figures.values())))
    best = " (best round)" if rounds > 1 else ""
    headers = [f"figure{best}", base.name, loaded.name, "loaded / seed", f"≤ {GOAL}x"]
    print(common.table(headers, rows))
    if rounds > 1:
        print()
        print(f"every round ({base.name} / {loaded.name}):")
        print()
        detail: list[list[object]] = [
            [
                figure,
                *(
                    f"{number(b)} / {number(v)}"
                    for b, v in zip(values, loaded.figures[figure], strict=True)
                ),
            ]
            for figure, values in base.figures.items()
        ]
        print(common.table(["figure", *(f"round {r + 1}" for r in range(rounds))], detail))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trainers", type=int, default=1000)
    parser.add_argument("--allocations", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10, help="per HTTP case and round")
    parser.add_argument(
        "--connections", type=int, default=1, help="HTTP client threads (see --same-database)"
    )
    parser.add_argument(
        "--calls", type=int, default=100, help="in-process calls per path (course 1: a fifth)"
    )
    parser.add_argument("--top-up-runs", type=int, default=3, help="whole passes per round")
    parser.add_argument(
        "--confirms-per-second", type=int, default=1000, help="pending payments seeded"
    )
    parser.add_argument("--skip-seed", action="store_true", help="measure the last seed again")
    parser.add_argument(
        "--base",
        choices=["live", "catalogue"],
        default="live",
        help="the seed database: the live seed (no history) or the catalogue alone",
    )
    parser.add_argument("--plans", type=Path, default=PLANS)
    parser.add_argument(
        "--same-database",
        action="store_true",
        help="an A/A run: both sides on the last seed's seed database, nothing seeded;"
        " a ratio away from 1.0 is the harness's own (which side, which gunicorn)",
    )
    args = parser.parse_args()
    if args.same_database and args.plans == PLANS:  # the kept plans are the loaded one's
        args.plans = Path(tempfile.gettempdir()) / "tutorflow-volume-same-database-plans.txt"
    started = time.perf_counter()
    install(TravellingClock(NOW))
    base_url = seed_url(common.settings.database_url)
    stores = (
        store("seed", base_url),
        store("loaded", base_url if args.same_database else common.settings.database_url),
    )
    trainers = args.trainers + loader.REFERENCE_TRAINERS
    if not (args.skip_seed or args.same_database):
        seed(stores, trainers, args.allocations, args.base)
    seeded = time.perf_counter() - started
    # The HTTP loop's (warm-up, then every round), the action's, the plan's.
    confirms = int(args.confirms_per_second * (args.seconds * args.rounds + 1))
    confirms += (args.calls + 1) * args.rounds + 1
    for each in stores:
        find_probes(each, confirms)
    common.flush_bench_redis()

    try:
        with ExitStack() as stack:
            for each in stores:
                api = stack.enter_context(
                    api_server(
                        {"DATABASE_URL": each.settings.database_url},
                        app="bench.reference_wsgi:app",
                        workers=None,
                    )
                )
                each.port = api.port
            for _, request in HTTP:  # warm every worker's pools and imports
                http_ab(stores, request, 1, args.connections)
            for _ in range(args.rounds):
                measure_in_process(stores, args.calls, args.top_up_runs)
                measure_http(stores, args.seconds, args.connections)
        measured = time.perf_counter() - started - seeded
        found = write_plans(stores, args.plans)
    finally:
        common.flush_bench_redis()

    print(common.machine_note())
    for each in stores:
        print(describe(each))
    print(
        f"seeding {seeded:.0f} s, measuring {measured:.0f} s ({args.rounds} round(s); in this "
        f"process the two databases' calls in turn, {args.calls} a path (course 1: a fifth); "
        f"HTTP: {args.connections}"
        f" threads, each sending to both gunicorns in turn for {args.seconds:g} s)"
    )
    print()
    figures = report(stores)
    print()
    plans = args.plans.resolve()
    plans = plans.relative_to(common.ROOT) if plans.is_relative_to(common.ROOT) else plans
    print(
        "every statement of each path, run once more under EXPLAIN (ANALYZE, BUFFERS) on each "
        f"database (the loaded one's plans in {plans}); a batch's repeats summed:"
    )
    print()
    print(plan_summary(stores, found))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    common.print_summary("volume", "off", figures)


if __name__ == "__main__":
    main()
