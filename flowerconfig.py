"""Flower settings (`celery -A celeryapp flower --conf=flowerconfig.py`), taken
from the one Settings object (core/config.py)."""

import os

from celeryconfig import PARKED_QUEUE
from core import flower_queues
from core.config import get_settings

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

# Dead letters at a glance (docs/operations.md, "Dead letters in Flower"): the Broker page
# lists the dead_letter queue, whose length is the number of open letters, though no
# worker consumes it; the Tasks page shows each failure's message (for a letter: its id
# and why) beside its state, where a 1280-px screen shows it; the uuid, which links to
# the task's page, comes last.
flower_queues.install([PARKED_QUEUE])
tasks_columns = "name,state,exception,received,runtime,worker,uuid"
