"""Flower settings (`celery -A celeryapp flower --conf=flowerconfig.py`), taken
from the one Settings object (core/config.py)."""

import os

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
