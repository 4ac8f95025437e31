"""The composition root: the one place that turns Settings into the running parts and
wires them together (cosmicpython's bootstrap.py; warehouse keeps its Celery app in the
config registry the same way).

    Settings ─► Cache ─► Telemetry ─► PaymentProvider, TokenVerifier, Mailer
             ─► the Celery app ─► the outbox dispatch (tasks.handoff) ─► Publisher
             ─► Databases ("api", "worker"), their sessions carrying the after-commit
                channel (Publisher + Cache.announce)

Flask (`app.create_app`), the Celery processes (`celeryapp.py`), the CLI, the benches
and the tests take what they need from one `Services`. Nothing below this module builds
a client, a pool or an app of its own. `bootstrap(settings)` builds once per Settings in
a process, so an API and eager tasks in one process (tests) share one engine per role,
one Redis pool and one provider breaker.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from core.cache import Cache
from core.config import Settings, get_settings
from core.mail import Mailer
from core.provider import PaymentProvider
from core.telemetry import Telemetry
from core.tokens import TokenVerifier
from models import Database
from models.outbox import AfterCommitChannel, Publisher
from tasks.celery_app import TutorflowCelery
from tasks.handoff import dispatch


@dataclass(frozen=True)
class Services:
    settings: Settings
    cache: Cache
    telemetry: Telemetry
    provider: PaymentProvider
    tokens: TokenVerifier
    mailer: Mailer
    celery: TutorflowCelery
    publisher: Publisher
    # Their PostgreSQL timeouts differ (settings.api_*/worker_*): one engine each.
    api_database: Database
    worker_database: Database


def build(settings: Settings, *, celery_is_current: bool = False) -> Services:
    """Everything, new, for `settings`."""
    cache = Cache.from_settings(settings)
    telemetry = Telemetry(cache.client)
    celery = TutorflowCelery(settings, set_as_current=celery_is_current)
    publisher = Publisher(dispatch(celery))
    channel = AfterCommitChannel(publisher, cache.announce)
    services = Services(
        settings=settings,
        cache=cache,
        telemetry=telemetry,
        provider=PaymentProvider(settings, telemetry),
        tokens=TokenVerifier(settings),
        mailer=Mailer.for_settings(settings),
        celery=celery,
        publisher=publisher,
        api_database=Database(settings, channel, role="api"),
        worker_database=Database(settings, channel, role="worker"),
    )
    # What the tasks reach through `self.app` (tasks.base.services).
    celery.database = services.worker_database
    celery.cache = cache
    celery.telemetry = telemetry
    celery.provider = services.provider
    celery.mailer = services.mailer
    celery.outbox = publisher
    return services


_built: dict[Settings, Services] = {}
_lock = threading.Lock()


def bootstrap(settings: Settings | None = None) -> Services:
    """This process's services for `settings` (the environment's by default)."""
    settings = settings or get_settings()
    with _lock:
        services = _built.get(settings)
        if services is None:
            services = _built[settings] = build(settings)
        return services


def dispose_after_fork() -> None:
    """In a forked child: drop every connection inherited from the parent."""
    for services in _built.values():
        services.api_database.dispose_after_fork()
        services.worker_database.dispose_after_fork()
