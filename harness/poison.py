"""Test-only: a poison message. The step named by POISON_STEP SIGKILLs the pool process
running it (as the kernel's OOM killer or a segfault in a C library would: no exception,
no `on_failure`) while the payment's Redis key `harness:poison:<payment id>` holds a
count of kills left; each kill takes one.

Harness workers load it with `--include harness.poison` (harness/processes.py); it is
inert unless POISON_STEP names a task, and it strikes inside the step's body (when its
transaction begins), after the base task's checks, where a real poison would.
"""

from __future__ import annotations

import logging
import os
import signal

from celery import current_task
from sqlalchemy import event
from sqlalchemy.orm import Session

from core.config import get_settings
from core.redis_client import redis_client

log = logging.getLogger(__name__)

STEP = os.environ.get("POISON_STEP", "")
KEY = "harness:poison:{correlation_id}"
_client = redis_client(get_settings().cache_url, get_settings().redis_sentinel_master)


@event.listens_for(Session, "after_begin")
def _kill_the_process_running_a_poisoned_step(session: Session, *_: object) -> None:
    task = current_task
    if not STEP or task is None or task.name != STEP:
        return
    key = KEY.format(correlation_id=(task.request.kwargs or {}).get("correlation_id"))
    if int(_client.get(key) or 0) > 0:
        _client.decr(key)
        log.warning("poison kill pid=%s step=%s", os.getpid(), STEP)
        os.kill(os.getpid(), signal.SIGKILL)
