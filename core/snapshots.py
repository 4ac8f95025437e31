"""Snapshots a process keeps for a few seconds: one per key (a course), each with the
`now` it was read at (its `taken_at`). app.runtime keeps one `Snapshots` per app
instance for GET /courses/{id}/availability (AVAILABILITY_SNAPSHOT_SECONDS)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Generic, Protocol, TypeVar


class Taken(Protocol):
    @property
    def taken_at(self) -> datetime: ...


S = TypeVar("S", bound=Taken)


class Snapshots(Generic[S]):
    """Per key (a course id), the last snapshot read (a CalendarSnapshot), reused while
    the `now` of a request is less than `seconds` from its `taken_at` (either side, so a
    clock set back does not keep an old one), read again otherwise. The age is judged
    against the `now` the caller passes (the domain clock), never a clock of its own:
    tests move it. `seconds` 0: nothing kept, every request reads its own.

    Thread-safe. One request per course reads a stale snapshot again; requests for the
    same course that arrive meanwhile wait for it (they do not get the stale one), so no
    answer rests on a snapshot older than `seconds`; other courses are not held up.
    Snapshots of courses nobody asked about for `seconds` are dropped at each read."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._age = timedelta(seconds=seconds)
        self._lock = threading.Lock()
        self._kept: dict[int, S] = {}
        self._reading: dict[int, threading.Lock] = {}
        self.reads = 0  # snapshots read (for the bench and the tests)

    @property
    def enabled(self) -> bool:
        return self.seconds > 0

    def get(self, course_id: int, now: datetime, read: Callable[[S | None], S]) -> S:
        """The course's snapshot fresh at `now`: the kept one, or `read(previous)`'s
        (previous: the stale one it replaces, if any, for the reader to prepare what
        that one was asked for)."""
        if not self.enabled:
            with self._lock:
                self.reads += 1
            return read(None)
        kept = self._fresh(course_id, now)
        if kept is not None:
            return kept
        with self._lock:
            reading = self._reading.setdefault(course_id, threading.Lock())
        with reading:
            kept = self._fresh(course_id, now)  # read by another request meanwhile
            if kept is not None:
                return kept
            snapshot = read(self._kept.get(course_id))
            with self._lock:
                self.reads += 1
                self._kept = {
                    kept_id: kept
                    for kept_id, kept in self._kept.items()
                    if abs(now - kept.taken_at) < self._age
                }
                self._kept[course_id] = snapshot
            return snapshot

    def _fresh(self, course_id: int, now: datetime) -> S | None:
        kept = self._kept.get(course_id)
        if kept is not None and abs(now - kept.taken_at) < self._age:
            return kept
        return None
