"""The Celery application: `celery -A tasks.celery_app worker|beat|flower`."""

from celery import Celery
from celery.signals import setup_logging, worker_process_init

from core.config import settings
from core.logs import configure_logging
from models.session import dispose_engine_after_fork

celery_app = Celery("tutorflow", include=["tasks.pipeline", "tasks.dead_letters", "tasks.beat"])
celery_app.config_from_object("celeryconfig")


@setup_logging.connect
def _configure_logging(**_: object) -> None:
    configure_logging(settings.log_level, settings.log_json)


@worker_process_init.connect
def _new_pool_child(**_: object) -> None:
    dispose_engine_after_fork()
