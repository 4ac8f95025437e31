"""A real Celery worker in a subprocess, for tests of delivery semantics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALL_QUEUES = "pipeline,dead_letter,maintenance"


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    log_path: Path
    restarts: int = 0
    stopping: bool = False  # set by kill() and stop(): a deliberate end is not restarted
    lock: threading.Lock = field(default_factory=threading.Lock)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        wait_until(lambda: text in self.log(), timeout, f"worker log never said {text!r}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group: the main process and its pool children."""
        with self.lock:
            self.stopping = True
            if self.process.poll() is None:
                os.killpg(self.process.pid, sig)
                self.process.wait(timeout=30)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait(timeout=30)


def wait_until(predicate: Callable[[], object], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(message)


@contextmanager
def celery_worker(
    queues: str = ALL_QUEUES,
    concurrency: int = 2,
    env: dict[str, str] | None = None,
    beat: bool = False,
    supervise: bool = False,
) -> Iterator[WorkerProcess]:
    """A worker consuming `queues`; with `beat`, an embedded beat (-B) as well.

    With `supervise`, a worker that exits by itself is started again, as a process
    supervisor does in production (compose's `restart: unless-stopped`): a Celery
    worker can exit on a broker connection loss (kombu's "Unrecoverable error")."""
    log_path = Path(tempfile.mkstemp(prefix="tutorflow-worker-", suffix=".log")[1])
    command = [
        sys.executable, "-m", "celery", "-A", "tasks.celery_app", "worker",
        "-Q", queues, "-c", str(concurrency), "-P", "prefork", "-l", "INFO",
        "-n", f"test-{uuid.uuid4().hex[:8]}@%h", "--include", "tests.fault_pause",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    if beat:
        command += ["-B", "--schedule", str(log_path.with_suffix(".beat"))]

    def launch() -> subprocess.Popen:
        with log_path.open("a") as log_file:
            return subprocess.Popen(
                command,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as a whole
            )

    worker = WorkerProcess(launch(), log_path)

    def supervisor() -> None:
        while not worker.stopping:
            with worker.lock:
                if worker.process.poll() is not None and not worker.stopping:
                    worker.restarts += 1
                    worker.process = launch()
            time.sleep(0.5)

    if supervise:
        threading.Thread(target=supervisor, daemon=True).start()
    try:
        worker.wait_for_log(" ready.", timeout=60)
        yield worker
    finally:
        worker.stop()
