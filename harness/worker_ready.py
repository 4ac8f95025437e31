"""Loaded by harness workers (`--include harness.worker_ready`): when the worker is ready
to consume, it writes the moment (time.time()) into the file HARNESS_READY_FILE names.
The harness waits for that file, not for a line in the log."""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery.signals import worker_ready


@worker_ready.connect
def _stamp(**_: object) -> None:
    target = os.environ.get("HARNESS_READY_FILE")
    if target:
        partial = Path(f"{target}.tmp")
        partial.write_text(repr(time.time()))
        partial.replace(target)  # atomic: a reader never sees half a stamp
