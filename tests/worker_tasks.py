"""Test-only tasks, loaded by a harness worker (`include=("tests.worker_tasks",)`).

`step`: its first attempt fails again after its retry was published. It stands for what a
partition did in the hosts suite: a step hung on the cut network, Celery published its
retry once the link was back, and the soft time limit struck while Celery was still
handling that retry, so the attempt ended as a failure although its retry was on its way.
Here the late failure is raised by hand, at the same point.

`slow_step`: its first attempt outlasts the worker's soft time limit.

`flaky_step`: fails once, then succeeds.
"""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from core.config import get_settings
from core.redis_client import redis_client
from domain.errors import TransientStepError
from tasks.base import PipelineTask

DONE_KEY = "tests:late-failure:{correlation_id}"


def _done(correlation_id: str) -> str:
    """Marks the run finished where the test reads it (the cache's Redis)."""
    settings = get_settings()
    redis_client(settings.cache_url, settings.redis_sentinel_master).set(
        DONE_KEY.format(correlation_id=correlation_id), "done", ex=600
    )
    return "done"


class FailsAfterItsRetry(PipelineTask):
    def retry(self, *args: Any, **options: Any) -> Any:
        try:
            return super().retry(*args, **options)
        finally:
            if self.request.retries == 0:
                raise SoftTimeLimitExceeded()


@shared_task(base=FailsAfterItsRetry, bind=True, name="tests.worker_tasks.step", max_retries=3)
def step(self: PipelineTask, *, correlation_id: str) -> str:
    if self.request.retries == 0:
        raise TransientStepError("the first attempt fails")
    return _done(correlation_id)


@shared_task(base=PipelineTask, bind=True, name="tests.worker_tasks.slow_step", max_retries=3)
def slow_step(self: PipelineTask, *, correlation_id: str, seconds: float) -> str:
    """The first attempt sleeps `seconds`, then fails; a soft time limit that strikes
    first is a transient error too (tasks.base): either way the retry finishes."""
    if self.request.retries == 0:
        time.sleep(seconds)
        raise TransientStepError("slept to the end: no time limit struck")
    return _done(correlation_id)


@shared_task(base=PipelineTask, bind=True, name="tests.worker_tasks.flaky_step", max_retries=3)
def flaky_step(self: PipelineTask, *, correlation_id: str) -> str:
    """Fails once (a transient error, so it retries, 1 s later as a backoff would have
    it), then succeeds. A retry at once could finish in the other pool process before
    this attempt's retried event is sent, and Flower would keep that later RETRY."""
    if self.request.retries == 0:
        raise self.retry(exc=TransientStepError("the first attempt fails"), countdown=1)
    return "done"
