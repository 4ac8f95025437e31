"""Where a payment's Python CPU goes, without Celery's messaging: N payments confirmed and
fulfilled eagerly in this process (the confirm, the five steps, both e-mails over SMTP),
under cProfile.

The provider sandbox and an SMTP sink that discards what it takes run in threads of this
process; the figure per payment is this (main) thread's CPU, i.e. the application's
side of the confirm, the steps and the two e-mails: SQLAlchemy, psycopg2, the e-mail
package, smtplib, the provider client, logging — what a change to the application code
moves. It leaves out what the knee bench adds on top (Celery's messages and events,
Redis, PostgreSQL's backends, the API's HTTP), so it is a tool to compare two versions
of the code in one sitting, not a budget. The reference in the same run is the same
thread's CPU for a trivial SELECT round trip repeated as many times as a payment runs
statements (a floor that moves with the machine, not the code).

With --instructions it runs itself under valgrind's callgrind and counts the machine
instructions the main thread executes for the same plain run and the same reference,
instead of their CPU time. The count does not move with what the machine's other work
or its speed of the day does (two runs of the same code agree to about 0.1 %, where the
CPU time moved by ±15 % within an hour on this two-core machine), so it resolves a
change of a few percent in the application's own side that no timed run here can
(BENCHMARKS.md, "Issue 25, tenth session"). About 50 times slower than the plain run:
keep --payments small (10 takes about 40 s).

    python -m bench.eager_profile [--payments 200] [--top 30] [--output FILE.prof]
    python -m bench.eager_profile --instructions [--payments 10] [--statements]
"""

from __future__ import annotations

import os
import socket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_SMTP_PORT = _free_port()
os.environ.setdefault("SMTP_URL", f"smtp://127.0.0.1:{_SMTP_PORT}")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Any  # noqa: E402

from aiosmtpd.controller import Controller  # noqa: E402
from sqlalchemy import event, text  # noqa: E402

import bench.common as common  # noqa: E402  (before any project module reads the settings)
import tasks.notifications  # noqa: E402  (the task modules, registered for eager runs)
import tasks.pipeline  # noqa: E402, F401
from actions import payments as actions  # noqa: E402
from bench import profiling  # noqa: E402
from bench.knee import checked_out_here, seed_realistic  # noqa: E402
from bench.profiling import Instructions  # noqa: E402
from bootstrap import bootstrap  # noqa: E402


class _Discard:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


def _count_statements(engine: Any, texts: Counter[str]) -> list[int]:
    counter = [0]

    @event.listens_for(engine, "before_cursor_execute")
    def _count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        counter[0] += 1
        texts[" ".join(statement.split())[:150]] += 1

    return counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    profiling.add_arguments(parser)
    parser.add_argument("--statements", action="store_true", help="list them, per payment")
    args = parser.parse_args()
    statements_option = ["--statements"] if args.statements else []
    # The rerun picks its own free port for the SMTP sink.
    if profiling.counted_instead(
        args, "bench.eager_profile", statements_option, drop_env=("SMTP_URL",)
    ):
        return
    instructions = Instructions()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the sandbox's request lines

    services = bootstrap(common.settings)
    celery = services.celery
    celery.conf.task_always_eager = True
    celery.conf.task_eager_propagates = True
    sink = Controller(_Discard(), hostname="127.0.0.1", port=_SMTP_PORT)
    sink.start()
    try:
        common.fresh_database()
        common.flush_bench_redis()
        total = args.warmup + 2 * args.payments
        course_id = seed_realistic(total)
        database = services.worker_database

        payments = checked_out_here(services, course_id, args.warmup + args.payments)
        texts: Counter[str] = Counter()
        statements = _count_statements(database.engine, texts)

        def confirm(payment_id: Any) -> None:
            actions.confirm(
                database,
                payment_id,
                student_id=None,
                source="bench",
                hold_minutes=common.settings.hold_minutes,
            )

        for payment_id in payments[: args.warmup]:
            confirm(payment_id)
        measured = payments[args.warmup :]
        profile = cProfile.Profile(time.thread_time)  # CPU, not waiting for PostgreSQL
        statements[0] = 0
        texts.clear()
        started = time.thread_time()
        if not args.no_cprofile:
            profile.enable()
        for payment_id in measured:
            confirm(payment_id)
        profile.disable()
        # Without the profiler's overhead, the same work again would need new payments;
        # the profiled figure is reported and a plain run below gives the honest one.
        profiled_ms = 1000 * (time.thread_time() - started) / len(measured)
        per_payment = statements[0] / len(measured)
        statement_texts = {text: n / len(measured) for text, n in texts.most_common()}

        fresh = checked_out_here(services, course_id, args.payments)
        with instructions.count() as plain_instructions:
            started = time.thread_time()
            for payment_id in fresh:
                confirm(payment_id)
            plain_ms = 1000 * (time.thread_time() - started) / len(fresh)

        rounds = max(1, round(per_payment)) * len(fresh)
        with (
            database.engine.connect() as connection,
            instructions.count() as reference_instructions,
        ):
            started = time.thread_time()
            for _ in range(rounds):
                connection.execute(text("SELECT 1")).scalar()
            reference_ms = 1000 * (time.thread_time() - started) / len(fresh)
        sessions = common.count_scheduled()
        mails = common.scalar("SELECT count(*) FROM notifications WHERE status = 'sent'")
    finally:
        sink.stop()
        celery.conf.task_always_eager = False

    print(common.machine_note())
    print(
        f"{len(measured) + len(fresh)} payments fulfilled eagerly ({sessions} with their "
        f"sessions, {mails} e-mails sent in all)"
    )
    reference_row = f"reference: {per_payment:.1f} x SELECT 1 (the statements a payment runs)"
    if instructions.active:
        plain = plain_instructions[0] / len(fresh) / 1e6
        reference = reference_instructions[0] / len(fresh) / 1e6
        header = ["figure (under callgrind)", "millions of this thread's instructions per payment"]
        rows = [["confirm + 5 steps + 2 e-mails, plain", f"{plain:.2f}"]]
    else:
        plain, reference = plain_ms, reference_ms
        header = ["figure", "ms of this thread's CPU per payment"]
        first_pass = "the same, first pass" + ("" if args.no_cprofile else " (under cProfile)")
        rows = [
            ["confirm + 5 steps + 2 e-mails, plain", f"{plain_ms:.2f}"],
            [first_pass, f"{profiled_ms:.2f}"],
        ]
    rows += [
        [reference_row, f"{reference:.2f}"],
        ["ratio to the reference", f"{plain / reference:.2f}x"],
    ]
    print(common.table(header, rows))
    print(f"\nstatements per payment: {per_payment:.1f}")
    if args.statements:
        for text_, n in statement_texts.items():
            print(f"  {n:4.1f}  {text_}")
    profiling.print_profile(profile, args, "the confirm, the steps, the e-mails")


if __name__ == "__main__":
    main()
