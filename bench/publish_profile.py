"""What one task message costs its publisher, in this process, on the bench Redis: the
API's hand-off of the fulfilment chain, its first link alone, and the next link as a
worker publishes it when a step returns (celery.app.trace: the step's result as its
argument, the links left in the message's `chain` option). Every publish of a payment
is one of these: six a payment (the API's hand-off, four next links, the e-mails' task).

Beside them, the same worker's publish with parts left out (--instructions counts
them; timed, each differs by less than this machine's noise): the project's
before_task_publish hook (tasks/celery_app.py, which drops the publisher's time limits
from the message), kombu's declaration check (on every publish it binds a copy of the
queue, its exchange and binding, though the queue is declared once), and Celery's
repr of the arguments (its saferepr, for Flower and the worker's log).

    python -m bench.publish_profile [--payments 200] [--top 30]
    python -m bench.publish_profile --instructions [--payments 30]
"""

from __future__ import annotations

import argparse
import cProfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from celery.canvas import signature
from celery.signals import before_task_publish

import bench.common as common
import tasks.notifications  # the tasks registered, as in a worker
import tasks.pipeline  # noqa: F401
from bench import profiling
from bench.profiling import Instructions
from bootstrap import bootstrap
from tasks import celery_app, chains
from tasks.handoff import API_PUBLISH_RETRY

HOOK = celery_app._leave_time_limits_to_the_worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    profiling.add_arguments(parser)
    args = parser.parse_args()
    if profiling.counted_instead(args, "bench.publish_profile", []):
        return
    app = bootstrap(common.settings).celery
    payment = str(uuid.uuid4())
    links = chains.fulfilment_chain(app, payment).tasks
    second, rest = dict(links[1]), [dict(link) for link in reversed(links[2:])]
    result = {"payment_id": payment, "purchase_id": 1}

    def next_link(**options: Any) -> None:
        signature(dict(second), app=app).apply_async(
            (result,), chain=list(rest), parent_id=payment, root_id=payment, **options
        )

    def first_link() -> None:
        app.signature(
            chains.VERIFY_PAYMENT, (payment,), {"correlation_id": payment}, immutable=True
        ).apply_async(retry_policy=API_PUBLISH_RETRY)

    def whole_chain() -> None:
        chains.fulfilment_chain(app, payment).apply_async(retry_policy=API_PUBLISH_RETRY)

    # (label, publish, with the project's before_task_publish hook connected)
    cases: list[tuple[str, Callable[[], None], bool]] = [
        ("the API's hand-off: the fulfilment chain", whole_chain, True),
        ("its first link alone", first_link, True),
        ("a worker's next link", next_link, True),
        ("  without the declaration check", lambda: next_link(declare=[]), True),
        ("  without Celery's argument reprs", lambda: next_link(argsrepr="", kwargsrepr=""), True),
        ("  without the time-limit hook", next_link, False),
        ("  without all three", lambda: next_link(declare=[], argsrepr="", kwargsrepr=""), False),
    ]
    instructions = Instructions()
    rows = []
    profile = cProfile.Profile(time.thread_time)
    try:
        common.flush_bench_redis()
        for label, publish, hooked in cases:
            if not hooked:
                before_task_publish.disconnect(HOOK)
            try:
                for _ in range(args.warmup):
                    publish()
                with instructions.count() as counted:
                    started = time.thread_time()
                    for _ in range(args.payments):
                        publish()
                    took = 1000 * (time.thread_time() - started) / args.payments
            finally:
                if not hooked:
                    before_task_publish.connect(HOOK)
            figure = counted[0] / args.payments / 1e6 if instructions.active else took
            rows.append([label, f"{figure:.3f}"])
        if not args.no_cprofile:
            profile.enable()
            for _ in range(args.payments):
                next_link()
            profile.disable()
    finally:
        common.flush_bench_redis()
    print(common.machine_note())
    unit = "millions of instructions" if instructions.active else "ms of CPU"
    print(common.table(["publish (Redis broker)", f"{unit} per message"], rows))
    profiling.print_profile(profile, args, "a worker's next link")


if __name__ == "__main__":
    main()
