"""No-op Celery tasks on the project's app: the bare chain the real pipeline is compared to.
They send the task events the steps send (CELERY_STEP_EVENTS, tasks.base.StepEvents).

The worker imports this module (`--include bench.noop_tasks`); it must not import
bench.common (the worker inherits the bench settings from its parent's environment).
"""

from __future__ import annotations

import json
from typing import Any

from celery import chain
from celery.canvas import Signature

from core.cache import Cache
from tasks.base import StepEvents
from tasks.celery_app import celery_app

DONE_CHANNEL = "bench:noop:done"
CACHE = Cache.for_settings(celery_app.settings)


@celery_app.task(base=StepEvents, name="bench.noop")
def noop(value: Any = None) -> Any:
    return value


@celery_app.task(base=StepEvents, name="bench.noop_done")
def noop_done(value: Any) -> None:
    # One PUBLISH, as the real chain's last step ends with one live event.
    CACHE.client.publish(DONE_CHANNEL, json.dumps({"token": value}))


def noop_chain(token: str) -> Signature:
    """Five links, each passing its result on, like verify_payment → ... → refresh."""
    return chain(noop.si(token), noop.s(), noop.s(), noop.s(), noop_done.s())
