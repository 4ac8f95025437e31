"""Flower in a subprocess, queried the way an operator's browser does."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.services import free_port
from tests.worker import ROOT, wait_until

AUTH = ("ops", "secret")


@contextmanager
def flower() -> Iterator[str]:
    port = free_port()
    state = Path(tempfile.mkdtemp(prefix="tutorflow-flower-"))
    env = {
        **os.environ,
        "FLOWER_PORT": str(port),
        "FLOWER_DB": str(state / "flower.db"),
        "FLOWER_BASIC_AUTH": ":".join(AUTH),
    }
    log = (state / "flower.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks.celery_app", "flower",
         "--conf=flowerconfig.py"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{base}/healthcheck", timeout=1).ok
        except requests.ConnectionError:
            return False

    try:
        wait_until(up, 30, "Flower did not start")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
