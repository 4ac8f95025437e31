"""Private servers for fault tests: a redis-server, a PostgreSQL cluster and the API
under gunicorn, each started, stopped and killed by the test itself (by pid), so the
machine's shared services are never touched."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import redis
import requests

from tests.worker import ROOT, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """redis-server on its own port; with `aof`, it keeps its data across restarts."""

    def __init__(self, aof: bool = False) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="tutorflow-redis-")
        self.aof = aof
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else [
            "--appendonly", "no"]  # fmt: skip
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--dir", self.dir, *persistence],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self.up, 10, "redis-server did not start")

    def up(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: with AOF, everything is on disk first
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def private_redis(aof: bool = False) -> Iterator[PrivateRedis]:
    server = PrivateRedis(aof)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return found[-1]


class PrivatePostgres:
    """A throwaway PostgreSQL cluster owned by the `postgres` OS user (initdb refuses root)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="tutorflow-pg-")
        shutil.chown(self.dir, "postgres")
        self.data = os.path.join(self.dir, "data")
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/tutorflow"

    def _as_postgres(self, *command: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *command],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def init(self) -> None:
        self._as_postgres(_pg_bin("initdb"), "-D", self.data, "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        self._as_postgres(
            _pg_bin("pg_ctl"), "-D", self.data, "-w", "-l", os.path.join(self.dir, "log"),
            "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._as_postgres(_pg_bin("pg_ctl"), "-D", self.data, "-w", "-m", "fast", "stop")

    def up(self) -> bool:
        try:
            psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                             dbname="postgres", connect_timeout=1).close()  # fmt: skip
            return True
        except psycopg2.OperationalError:
            return False


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.init()
    server.start()
    try:
        yield server
    finally:
        if server.up():
            server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


class ApiProcess:
    def __init__(self, process: subprocess.Popen, base: str, log_path: Path) -> None:
        self.process, self.base, self.log_path = process, base, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def api_server(env: dict[str, str]) -> Iterator[ApiProcess]:
    """The real API under gunicorn (the project's gunicorn.conf.py) on a free port."""
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix="tutorflow-api-", suffix=".log")[1])
    metrics_dir = tempfile.mkdtemp(prefix="tutorflow-metrics-")
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env={**os.environ, **env, "API_BIND": f"127.0.0.1:{port}", "API_WORKERS": "1",
                 "PROMETHEUS_MULTIPROC_DIR": metrics_dir},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    api = ApiProcess(process, f"http://127.0.0.1:{port}", log_path)

    def healthy() -> bool:
        try:
            return requests.get(f"{api.base}/healthz", timeout=2).ok
        except requests.RequestException:  # refused, or accepted before a worker is up
            return False

    try:
        wait_until(healthy, 30, "the API did not start")
        yield api
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        shutil.rmtree(metrics_dir, ignore_errors=True)
