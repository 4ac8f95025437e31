"""What one app instance runs on: the composition root's services for its settings
(bootstrap.py: its database, cache, provider, tokens, Celery app) and what is the
API's own (stream slots, availability snapshots).

`create_app(settings)` builds one `Runtime` and keeps it in `app.extensions`; views, the
CLI and the metrics read it through `runtime()`. Nothing is copied into `app.config`
(which holds only Flask's and flask-smorest's own options).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from celery import Celery
from flask import current_app

from core.cache import Cache
from core.config import Settings
from core.provider import PaymentProvider
from core.snapshots import Snapshots
from core.telemetry import Telemetry
from core.tokens import TokenVerifier
from domain.availability import CalendarSnapshot
from models import Database

EXTENSION = "tutorflow"


@dataclass
class Runtime:
    settings: Settings
    database: Database
    cache: Cache
    telemetry: Telemetry
    provider: PaymentProvider
    tokens: TokenVerifier
    # Only to read the broker's queue depths (/metrics): the API publishes through the
    # outbox, whose publisher the composition root wired into the database's sessions.
    celery: Celery
    # Streams hold a request thread each: never more than this many per process, so
    # the other threads keep serving requests (app/views/students.py).
    stream_slots: threading.BoundedSemaphore = field(init=False)
    # Each course's calendar snapshot, reused by GET /courses/{id}/availability for
    # AVAILABILITY_SNAPSHOT_SECONDS (actions/availability.py).
    availability: Snapshots[CalendarSnapshot] = field(init=False)

    def __post_init__(self) -> None:
        self.stream_slots = threading.BoundedSemaphore(self.settings.stream_slots_per_process)
        self.availability = Snapshots(self.settings.availability_snapshot_seconds)


def runtime() -> Runtime:
    """The current app's runtime (inside a request or an app context)."""
    found: Runtime = current_app.extensions[EXTENSION]
    return found
