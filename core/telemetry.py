"""Operational counters that several processes write and any API process reads.

Workers, beat and the API are separate processes, often on separate hosts, and the API
answers `/metrics`. What only a worker sees — how long a step ran, that it retried, which
queues it consumes, its payment-provider breaker — is written here, in the cache Redis
(CACHE_URL), and read at scrape time, so every API process reports the same numbers and
nothing needs a shared directory or a scrape target per worker (docs/operations.md,
"Alerts and metrics"). Counters only grow (Prometheus' `rate()` handles a Redis restart as
a reset).
Times that decide freshness are Redis server time, so clock skew between hosts does not
count. Writers are best effort: a missing cache never fails a task.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import redis

log = logging.getLogger(__name__)

PREFIX = "stats:tasks"
DURATION_TASKS = f"{PREFIX}:duration:names"  # set of task names with a histogram
RETRIES = f"{PREFIX}:retries"  # hash: task name -> retries
CONSUMERS = "stats:consumers"  # zset per queue: worker hostname -> last beat (Redis time)
BREAKERS = "stats:breakers"  # hash: host:pid -> {"state", "at"} while not closed
# Step durations, seconds: the pipeline's steps take milliseconds; the verify step asks
# the provider (timeouts of a few seconds); beat jobs may take a minute.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Half-open entries this old belong to processes that are gone (a live one moves on).
BREAKER_FORGET_SECONDS = 3600


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def duration_key(task: str) -> str:
    return f"{PREFIX}:duration:{task}"


def consumers_key(queue: str) -> str:
    return f"{CONSUMERS}:{queue}"


def _label(le: float) -> str:
    return "+Inf" if math.isinf(le) else repr(le)


@dataclass(frozen=True)
class Durations:
    """One task's cumulative histogram: (upper bound, count) pairs ending at +Inf."""

    buckets: list[tuple[str, int]]
    total_seconds: float


@dataclass(frozen=True)
class Breakers:
    """How many processes' breakers refuse calls (open) or would let one probe through."""

    open: int
    half_open: int


@dataclass
class StepRuns:
    """Task runs (a retry or a failure is a run too) and retries not yet written: per
    task, the cumulative bucket counts (DURATION_BUCKETS, then +Inf) and the seconds."""

    durations: dict[str, tuple[list[int], float]] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.durations or self.retries)

    def add_run(self, task: str, seconds: float) -> None:
        counts, total = self.durations.get(task) or ([0] * (len(DURATION_BUCKETS) + 1), 0.0)
        for i, le in enumerate((*DURATION_BUCKETS, math.inf)):
            if seconds <= le:
                counts[i] += 1
        self.durations[task] = (counts, total + seconds)

    def add_retry(self, task: str) -> None:
        self.retries[task] = self.retries.get(task, 0) + 1


class Telemetry:
    """Writers (workers, any process with a breaker) and readers (the API's collector)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def now(self) -> float:
        seconds, micros = cast(tuple[int, int], self.client.time())
        return seconds + micros / 1_000_000

    # -- writers (best effort) -------------------------------------------------------

    def record(self, runs: StepRuns) -> None:
        """Runs and retries gathered in one process (tasks.telemetry): one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for task, (counts, seconds) in runs.durations.items():
            key = duration_key(task)
            pipe.sadd(DURATION_TASKS, task)
            for le, count in zip((*DURATION_BUCKETS, math.inf), counts, strict=True):
                if count:
                    pipe.hincrby(key, _label(le), count)
            pipe.hincrbyfloat(key, "sum", seconds)
        for task, count in runs.retries.items():
            pipe.hincrby(RETRIES, task, count)
        self._best_effort(pipe.execute)

    def consumer_beat(self, hostname: str, queues: Iterable[str]) -> None:
        """`hostname` consumes `queues` now (the worker's consumer bootstep, every few s)."""

        def beat() -> None:
            now = self.now()
            pipe = self.client.pipeline(transaction=False)
            for queue in queues:
                pipe.zadd(consumers_key(queue), {hostname: now})
            pipe.execute()

        self._best_effort(beat)

    def consumer_gone(self, hostname: str, queues: Iterable[str]) -> None:
        def gone() -> None:
            pipe = self.client.pipeline(transaction=False)
            for queue in queues:
                pipe.zrem(consumers_key(queue), hostname)
            pipe.execute()

        self._best_effort(gone)

    def breaker_changed(self, process: str, state: str) -> None:
        """A process's breaker moved: kept while not closed, forgotten when closed."""

        def write() -> None:
            if state == "closed":
                self.client.hdel(BREAKERS, process)
            else:
                self.client.hset(BREAKERS, process, json.dumps({"state": state, "at": self.now()}))

        self._best_effort(write)

    @staticmethod
    def _best_effort(write) -> None:
        try:
            write()
        except redis.RedisError:
            log.debug("telemetry write failed (cache unavailable)", exc_info=True)

    # -- readers (the API's /metrics; they raise redis.RedisError) -------------------

    def durations(self) -> dict[str, Durations]:
        members = cast(set[bytes | str], self.client.smembers(DURATION_TASKS))
        tasks = sorted(_text(name) for name in members)
        pipe = self.client.pipeline(transaction=False)
        for task in tasks:
            pipe.hgetall(duration_key(task))
        found: dict[str, Durations] = {}
        for task, stored in zip(tasks, pipe.execute(), strict=True):
            raw = {_text(key): value for key, value in stored.items()}
            bounds = (*DURATION_BUCKETS, math.inf)
            buckets = [(_label(le), int(raw.get(_label(le), 0))) for le in bounds]
            found[task] = Durations(buckets, float(raw.get("sum", 0)))
        return found

    def retries(self) -> dict[str, int]:
        stored = cast(dict[Any, Any], self.client.hgetall(RETRIES))
        return {_text(key): int(value) for key, value in stored.items()}

    def consumers(self, queues: Iterable[str], fresh_seconds: float) -> dict[str, int]:
        """Workers that beat for each queue within `fresh_seconds`."""
        queues = list(queues)
        since = self.now() - fresh_seconds
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            # Workers gone for a day (killed, no shutdown) are dropped from the set.
            pipe.zremrangebyscore(consumers_key(queue), "-inf", since - 86400)
            pipe.zcount(consumers_key(queue), since, "+inf")
        counts = pipe.execute()[1::2]
        return dict(zip(queues, (int(count) for count in counts), strict=True))

    def breakers(self, reset_seconds: float) -> Breakers:
        """An open breaker refuses calls for `reset_seconds`; after that its next call is
        a probe (pybreaker moves to half-open lazily), so it counts as half-open."""
        now = self.now()
        open_ = half_open = 0
        for process, raw in cast(dict[Any, Any], self.client.hgetall(BREAKERS)).items():
            entry = json.loads(raw)
            age = now - float(entry["at"])
            if age > BREAKER_FORGET_SECONDS:
                self.client.hdel(BREAKERS, process)
            elif entry["state"] == "open" and age < reset_seconds:
                open_ += 1
            else:
                half_open += 1
        return Breakers(open=open_, half_open=half_open)
