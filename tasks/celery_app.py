"""The Celery application: `celery -A tasks.celery_app worker|beat|flower`.

It is built from this process's Settings (one object, read once) and owns the database
the tasks use (`celery_app.database`), whose sessions carry the after-commit channel.
"""

from __future__ import annotations

from functools import cached_property

from celery import Celery
from celery.signals import setup_logging, worker_process_init

from celeryconfig import celery_config
from core.config import Settings, get_settings
from core.logs import configure_logging
from models import Database
from tasks import telemetry


class TutorflowCelery(Celery):
    def __init__(self, settings: Settings) -> None:
        super().__init__(
            "tutorflow", include=["tasks.pipeline", "tasks.dead_letters", "tasks.beat"]
        )
        self.settings = settings
        self.conf.update(celery_config(settings))

    @cached_property
    def database(self) -> Database:
        from tasks.effects import database_for  # the channel publishes these tasks

        return database_for(self.settings)


celery_app = TutorflowCelery(get_settings())
telemetry.install(celery_app)  # durations, retries, queue consumers for /metrics


@setup_logging.connect
def _configure_logging(**_: object) -> None:
    configure_logging(celery_app.settings.log_level, celery_app.settings.log_json)


@worker_process_init.connect
def _new_pool_child(**_: object) -> None:
    if "database" in celery_app.__dict__:  # created before the fork
        celery_app.database.dispose_after_fork()
