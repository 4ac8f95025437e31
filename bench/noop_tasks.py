"""No-op Celery tasks on the project's app: the bare chain the real pipeline is compared to.
They send the task events the steps send (CELERY_STEP_EVENTS, tasks.base.StepEvents).

The worker imports this module (`--include bench.noop_tasks`); it must not import
bench.common (the worker inherits the bench settings from its parent's environment).
"""

from __future__ import annotations

import json
from typing import Any

from celery import Celery, Task, chain, shared_task
from celery.canvas import Signature

from tasks.base import StepEvents

DONE_CHANNEL = "bench:noop:done"
NOOP, NOOP_DONE = "bench.noop", "bench.noop_done"


@shared_task(base=StepEvents, name=NOOP)
def noop(value: Any = None) -> Any:
    return value


@shared_task(base=StepEvents, bind=True, name=NOOP_DONE)
def noop_done(self: Task, value: Any) -> None:
    # One PUBLISH, as the real chain's last step ends with one live event.
    self.app.cache.client.publish(DONE_CHANNEL, json.dumps({"token": value}))


def noop_chain(app: Celery, token: str) -> Signature:
    """Five links, each passing its result on, like verify_payment → ... → refresh."""
    links = [app.signature(NOOP, (token,), immutable=True)]
    links += [app.signature(NOOP) for _ in range(3)] + [app.signature(NOOP_DONE)]
    return chain(*links, app=app)
