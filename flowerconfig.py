"""Flower settings (`celery -A celeryapp flower --conf=flowerconfig.py`), taken
from the one Settings object (core/config.py)."""

import os

from tornado.ioloop import IOLoop

from celeryconfig import PARKED_QUEUE
from core import flower_queues
from core.config import get_settings
from core.logs import STARTUP_CHATTER, configure_logging, say_ready

settings = get_settings()

address = settings.flower_address
port = settings.flower_port
basic_auth = [settings.flower_basic_auth]
# Task history survives a Flower restart.
persistent = True
db = settings.flower_db
os.makedirs(os.path.dirname(db) or ".", exist_ok=True)
state_save_interval = 60_000
purge_offline_workers = 300

# Startup (docs/operations.md): the project's log format (text, or JSON lines under
# LOG_JSON) instead of tornado's, and one ready line once Flower serves (`--quiet` leaves
# out its banner: the broker and every task's name). Flower's first inspection of the
# workers, made as it starts, beside workers that start too, finds none yet ("Inspect
# method … failed") and its events connection's "Connected to" are DEBUG.
logging = "none"  # tornado's option: the root logger is configure_logging's
configure_logging(settings.log_level, settings.log_json)
STARTUP_CHATTER.add(
    always=[("flower.inspector", "Inspect method %s failed"), ("kombu.mixins", "Connected to %s")]
)
IOLoop.current().add_callback(say_ready, "flower", settings.flower_public_url)

# Dead letters at a glance (docs/operations.md, "Dead letters in Flower"): the Broker page
# lists the dead_letter queue, whose length is the number of open letters, though no
# worker consumes it; the Tasks page shows each failure's message (for a letter: its id
# and why) beside its state, where a 1280-px screen shows it; the uuid, which links to
# the task's page, comes last.
flower_queues.install([PARKED_QUEUE])
tasks_columns = "name,state,exception,received,runtime,worker,uuid"
