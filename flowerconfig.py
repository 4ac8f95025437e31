"""Flower settings (`celery -A tasks.celery_app flower --conf=flowerconfig.py`)."""

import os

from core.config import settings

address = os.environ.get("FLOWER_ADDRESS", "127.0.0.1")
port = int(os.environ.get("FLOWER_PORT", "5555"))
basic_auth = [settings.flower_basic_auth]
# Task history survives a Flower restart.
persistent = True
db = os.environ.get("FLOWER_DB", ".flower/flower.db")
os.makedirs(os.path.dirname(db) or ".", exist_ok=True)
state_save_interval = 60_000
purge_offline_workers = 300
