"""Test-only: hold a pipeline step's transaction open, once per payment, so a fault
test can kill the worker in the middle of it.

Harness workers load it with `--include harness.fault_pause` (harness/processes.py); it is inert
unless FAULT_PAUSE_STEP names a task. It reads its two variables from the worker's
environment itself: production code never sees them.
"""

from __future__ import annotations

import logging
import os
import time

from celery import current_task
from sqlalchemy import event
from sqlalchemy.orm import Session

from core.config import get_settings
from core.redis_client import redis_client

log = logging.getLogger(__name__)

STEP = os.environ.get("FAULT_PAUSE_STEP", "")
SECONDS = float(os.environ.get("FAULT_PAUSE_SECONDS", "0") or 0)
_client = redis_client(get_settings().cache_url, get_settings().redis_sentinel_master)


@event.listens_for(Session, "before_commit")
def _pause_before_the_steps_commit(session: Session) -> None:
    task = current_task
    if not STEP or task is None or task.name != STEP:
        return
    correlation_id = (task.request.kwargs or {}).get("correlation_id")
    if _client.set(f"fault:paused:{STEP}:{correlation_id}", 1, nx=True, ex=600):
        log.warning("fault pause pid=%s step=%s", os.getpid(), STEP)
        time.sleep(SECONDS)
