"""Processes of our own for tests, benchmarks and the soak: Celery workers (optionally
supervised, with beat), the API under gunicorn, Flower, and private redis-server and
PostgreSQL servers. Each runs in its own process group and is stopped by its pid; the
machine's shared services are never touched. Readiness is a signal: a worker's
worker_ready stamp (harness.worker_ready), an HTTP probe for gunicorn and Flower.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import kombu
import kombu.exceptions
import psycopg2
import redis
import requests

from celeryconfig import soft_time_limit
from harness.hosts import DATA_HOST, Host

ROOT = Path(__file__).resolve().parent.parent
FLOWER_AUTH = ("ops", "secret")
# Every queue but the provider's: what a prefork worker beside `provider_worker` takes.
ALL_BUT_PROVIDER = "pipeline,dead_letter_intake,maintenance"
ALL_QUEUES = f"{ALL_BUT_PROVIDER},provider"


def time_limit_env(seconds: int) -> dict[str, str]:
    """A worker's environment for a task time limit of `seconds` (tests that must see a
    kill or a redelivery soon), with its PostgreSQL lock and statement timeouts under
    the soft limit, as the startup check asks (celeryconfig.check_delivery_settings)."""
    soft_ms = soft_time_limit(seconds) * 1000
    return {
        "CELERY_TASK_TIME_LIMIT": str(seconds),
        "WORKER_LOCK_TIMEOUT_MS": str(soft_ms // 2),
        "WORKER_STATEMENT_TIMEOUT_MS": str(soft_ms * 3 // 4),
    }


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    log_path: Path
    ready_path: Path
    restarts: int = 0
    stopping: bool = False  # set by kill() and stop(): a deliberate end is not restarted
    lock: threading.Lock = field(default_factory=threading.Lock)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready_at(self) -> float:
        """When the worker said it was ready (its worker_ready signal)."""
        return float(self.ready_path.read_text())

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
    pool: str = "prefork",
    env: dict[str, str] | None = None,
    beat: bool = False,
    supervise: bool = False,
    include: tuple[str, ...] = (),
    loglevel: str = "INFO",
    host: Host | None = None,
) -> Iterator[WorkerProcess]:
    """A worker consuming `queues`; with `beat`, an embedded beat (-B) as well.

    With `supervise`, a worker that exits by itself is started again, as a process
    supervisor does in production (compose's `restart: unless-stopped`): a Celery
    worker can exit on a broker connection loss (kombu's "Unrecoverable error"). With
    `host` (harness.hosts), it runs inside that host's network namespace."""
    log_path = Path(tempfile.mkstemp(prefix="tutorflow-worker-", suffix=".log")[1])
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "celeryapp",
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "-P",
        pool,
        "-l",
        loglevel,
        "-n",
        f"harness-{uuid.uuid4().hex[:8]}@{host.name if host else '%h'}",
        "--include",
        ",".join(("harness.worker_ready", "harness.fault_pause", "harness.poison", *include)),
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    if beat:
        command += ["-B", "--schedule", str(log_path.with_suffix(".beat"))]
    if host is not None:
        command = host.command(command)

    ready_path = log_path.with_suffix(".ready")

    def launch() -> subprocess.Popen:
        ready_path.unlink(missing_ok=True)
        with log_path.open("a") as log_file:
            return subprocess.Popen(
                command,
                cwd=ROOT,
                env={**os.environ, **(env or {}), "HARNESS_READY_FILE": str(ready_path)},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as a whole
            )

    worker = WorkerProcess(launch(), log_path, ready_path)

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
        wait_until(
            lambda: ready_path.exists() or worker.process.poll() is not None,
            60,
            "the worker never became ready",
        )
        if not ready_path.exists():
            raise AssertionError(f"the worker exited:\n{worker.log()[-3000:]}")
        yield worker
    finally:
        worker.stop()


def provider_worker(**options: Any) -> AbstractContextManager[WorkerProcess]:
    """The provider queue's worker as the Procfile and compose run it: 10 threads."""
    return celery_worker(queues="provider", pool="threads", concurrency=10, **options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """redis-server on its own port; with `aof`, it keeps its data across restarts; with
    `password`, clients and replicas need it; `options`: more redis-server options; with
    `host` (harness.hosts), it runs inside that host, at its address."""

    def __init__(
        self,
        aof: bool = False,
        address: str = "127.0.0.1",
        password: str | None = None,
        options: tuple[str, ...] = (),
        host: Host | None = None,
    ) -> None:
        self.port = free_port()
        self.host = host
        address = host.address if host else address
        self.address = address
        self.url = f"redis://{f':{password}@' if password else ''}{address}:{self.port}/0"
        if password:
            options = ("--requirepass", password, "--masterauth", password, *options)
        self.dir = tempfile.mkdtemp(prefix="tutorflow-redis-")
        self.aof = aof
        self.options = options
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.aof
            else ["--appendonly", "no"]
        )
        command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            *sorted({"127.0.0.1", self.address}),
            # Other hosts (the test's own namespaces) connect without a password.
            "--protected-mode",
            "no" if self.address != "127.0.0.1" else "yes",
            "--save",
            "",
            "--dir",
            self.dir,
            *persistence,
            *self.options,
        ]
        self.process = subprocess.Popen(
            self.host.command(command) if self.host else command, stdout=subprocess.DEVNULL
        )
        wait_until(self.up, 10, "redis-server did not start")

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=2)

    def up(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: with AOF, everything is on disk first
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def env(self) -> dict[str, str]:
        """What points a process at it: the broker and the cache alike."""
        return {"BROKER_URL": self.url, "CACHE_URL": self.url}


Server = TypeVar("Server", "PrivateRedis", "PrivateRabbitMQ")


@contextmanager
def _running(server: Server) -> Iterator[Server]:
    """Started, then stopped and its data directory removed."""
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@contextmanager
def private_redis(aof: bool = False, address: str = "127.0.0.1") -> Iterator[PrivateRedis]:
    """A redis-server of the test's own; `address`: where other hosts reach it too."""
    with _running(PrivateRedis(aof, address)) as server:
        yield server


SENTINEL_MASTER = "tutorflow"
SENTINEL_CONFIG = """port {port}
bind {bind}
dir {dir}
sentinel monitor {master} {primary_address} {primary_port} 2
sentinel auth-pass {master} {password}
sentinel down-after-milliseconds {master} 1000
sentinel failover-timeout {master} 10000
sentinel parallel-syncs {master} 1
"""


class SentinelGroup:
    """A primary, a replica and three sentinels (quorum 2), every process of the test's
    own, on loopback; with `primary_host` (harness.hosts), the primary runs inside that
    host, and the rest on loopback and the data host's address, where the replica and
    sentinels reach it. Failover in seconds: a primary that does not answer for 1 s is
    down, and a failover that stalls is retried after 10 s (production uses 5 to 30 s
    and minutes). The data nodes want a password: the sentinels and the clients learn
    it, and `stall_replication` uses it to cut the replica off."""

    PASSWORD = "sentinel-test"

    def __init__(self, primary_host: Host | None = None) -> None:
        self.primary = PrivateRedis(password=self.PASSWORD, host=primary_host)
        # Where the primary's replica and sentinels listen, and reach it from.
        self.address = DATA_HOST if primary_host else "127.0.0.1"
        self.replica = PrivateRedis(
            address=self.address,
            password=self.PASSWORD,
            options=("--replicaof", self.primary.address, str(self.primary.port)),
        )
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.dir = tempfile.mkdtemp(prefix="tutorflow-sentinel-")
        self.sentinels: list[subprocess.Popen] = []
        self.url = ";".join(
            f"sentinel://:{self.PASSWORD}@127.0.0.1:{port}/0" for port in self.sentinel_ports
        )

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        for port in self.sentinel_ports:
            config = Path(self.dir, f"sentinel-{port}.conf")  # sentinel rewrites it
            config.write_text(
                SENTINEL_CONFIG.format(
                    port=port,
                    bind=" ".join(sorted({"127.0.0.1", self.address})),
                    dir=self.dir,
                    master=SENTINEL_MASTER,
                    primary_address=self.primary.address,
                    primary_port=self.primary.port,
                    password=self.PASSWORD,
                )
            )
            self.sentinels.append(
                subprocess.Popen(
                    ["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL
                )
            )
        wait_until(self.watching, 60, "the sentinels never saw the replica and each other")

    def ask(self, port: int, *command: str) -> object:
        client = redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=1)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def watching(self) -> bool:
        """Every sentinel knows the replica (in sync) and the two other sentinels: a
        failover can be voted and has somewhere to go."""
        try:
            link = self.replica.client().info("replication").get("master_link_status")
            return link == "up" and all(
                len(self.ask(port, "SENTINEL", "REPLICAS", SENTINEL_MASTER)) == 1  # type: ignore[arg-type]
                and len(self.ask(port, "SENTINEL", "SENTINELS", SENTINEL_MASTER)) == 2  # type: ignore[arg-type]
                for port in self.sentinel_ports
            )
        except redis.RedisError:
            return False

    def master_port(self) -> int | None:
        """The primary's port as a majority of the sentinels name it (None: no majority)."""
        named: list[int] = []
        for port in self.sentinel_ports:
            try:
                address = self.ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER)
            except redis.RedisError:
                continue
            if address:
                named.append(int(address[1]))  # type: ignore[index]
        for candidate in set(named):
            if named.count(candidate) >= 2:
                return candidate
        return None

    def stall_replication(self) -> None:
        """The replica falls behind, as asynchronous replication allows: its link to the
        primary is closed and it can no longer log in to open another, while the
        primary goes on acknowledging writes that exist nowhere else."""
        self.replica.client().config_set("masterauth", "not-the-password")
        self.primary.client().client_kill_filter(_type="slave")

    def resume_replication(self) -> None:
        self.replica.client().config_set("masterauth", self.PASSWORD)

    def kill_primary(self) -> None:
        """SIGKILL: nothing flushed, nothing handed over."""
        assert self.primary.process is not None
        self.primary.process.kill()
        self.primary.process.wait(timeout=10)

    def stop(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=10)
        for server in (self.replica, self.primary):
            # SIGKILL: nothing here is kept, and a primary cut off from its replica
            # would wait out Redis's shutdown-timeout (10 s) on SIGTERM.
            if server.process is not None and server.process.poll() is None:
                server.process.kill()
                server.process.wait(timeout=10)
            shutil.rmtree(server.dir, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def sentinel_redis(primary_host: Host | None = None) -> Iterator[SentinelGroup]:
    """A Redis primary, its replica and three sentinels of the test's own; clients use
    `group.url` (sentinel://…;…) with REDIS_SENTINEL_MASTER=SENTINEL_MASTER."""
    group = SentinelGroup(primary_host)
    try:
        group.start()
        yield group
    finally:
        group.stop()


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return found[-1]


class PrivatePostgres:
    """A throwaway PostgreSQL cluster owned by the `postgres` OS user (initdb refuses root)."""

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.address = address
        self.dir = tempfile.mkdtemp(prefix="tutorflow-pg-")
        shutil.chown(self.dir, "postgres")
        self.data = os.path.join(self.dir, "data")
        self.url = f"postgresql+psycopg2://postgres@{address}:{self.port}/tutorflow"

    def _as_postgres(self, *command: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *command],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def init(self) -> None:
        self._as_postgres(_pg_bin("initdb"), "-D", self.data, "-A", "trust", "-U", "postgres")
        if self.address != "127.0.0.1":  # other hosts connect over their veth
            with open(os.path.join(self.data, "pg_hba.conf"), "a") as hba:
                hba.write(f"host all all {self.address}/24 trust\n")

    def start(self) -> None:
        self._as_postgres(
            _pg_bin("pg_ctl"),
            "-D",
            self.data,
            "-w",
            "-l",
            os.path.join(self.dir, "log"),
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses={self.address}"
            " -c max_connections=300",
            "start",
        )

    def stop(self) -> None:
        self._as_postgres(_pg_bin("pg_ctl"), "-D", self.data, "-w", "-m", "fast", "stop")

    def up(self) -> bool:
        try:
            psycopg2.connect(
                host=self.address,
                port=self.port,
                user="postgres",
                dbname="postgres",
                connect_timeout=1,
            ).close()
            return True
        except psycopg2.OperationalError:
            return False


@contextmanager
def private_postgres(address: str = "127.0.0.1") -> Iterator[PrivatePostgres]:
    server = PrivatePostgres(address)
    server.init()
    server.start()
    try:
        yield server
    finally:
        if server.up():
            server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


class ApiProcess:
    def __init__(
        self, process: subprocess.Popen, port: int, log_path: Path, address: str = "127.0.0.1"
    ) -> None:
        self.process, self.port, self.log_path = process, port, log_path
        self.base = f"http://{address}:{port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def api_server(
    env: dict[str, str],
    app: str = "wsgi:app",
    workers: int | None = 1,
    host: Host | None = None,
) -> Iterator[ApiProcess]:
    """The real API (or another WSGI `app`) under gunicorn with the project's
    gunicorn.conf.py on a free port; `workers` None keeps the configured number; with
    `host`, inside that host's network namespace, at its address."""
    port = free_port()
    address = host.address if host else "127.0.0.1"
    command = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", app]
    log_path = Path(tempfile.mkstemp(prefix="tutorflow-api-", suffix=".log")[1])
    metrics_dir = tempfile.mkdtemp(prefix="tutorflow-metrics-")
    with log_path.open("w") as log:
        process = subprocess.Popen(
            host.command(command) if host else command,
            cwd=ROOT,
            env={
                **os.environ,
                **env,
                "API_BIND": f"{address}:{port}",
                **({"API_WORKERS": str(workers)} if workers is not None else {}),
                # Its own: gunicorn's on_starting wipes the directory (a dev stack's too).
                "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api = ApiProcess(process, port, log_path, address)

    def healthy() -> bool:
        try:
            return requests.get(f"{api.base}/healthz", timeout=2).ok
        except requests.RequestException:  # refused, or accepted before a worker is up
            return False

    try:
        wait_until(lambda: healthy() or process.poll() is not None, 60, "the API did not start")
        if process.poll() is not None:
            raise AssertionError(f"the API exited:\n{api.log()[-3000:]}")
        yield api
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        shutil.rmtree(metrics_dir, ignore_errors=True)


@contextmanager
def flower(env: dict[str, str] | None = None) -> Iterator[str]:
    port = free_port()
    state = Path(tempfile.mkdtemp(prefix="tutorflow-flower-"))
    env = {
        **os.environ,
        **(env or {}),
        "FLOWER_PORT": str(port),
        "FLOWER_DB": str(state / "flower.db"),
        "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH),
    }
    log = (state / "flower.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celeryapp",
            "flower",
            "--conf=flowerconfig.py",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
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


class PrivateRabbitMQ:
    """A RabbitMQ node of the test's own (its name, ports and data directory), run as the
    `rabbitmq` OS user with the machine's Erlang cookie; its queues (quorum: always on
    disk) survive a restart. The cache stays the test run's Redis."""

    def __init__(self) -> None:
        self.port, dist_port = free_port(), free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.dir = tempfile.mkdtemp(prefix="tutorflow-rabbitmq-")
        Path(self.dir, "enabled_plugins").write_text("[].\n")
        Path(self.dir, "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
        )
        shutil.chown(self.dir, "rabbitmq", "rabbitmq")
        self.node_env = {
            "HOME": "/var/lib/rabbitmq",  # its .erlang.cookie
            "RABBITMQ_NODENAME": f"tutorflow-{uuid.uuid4().hex[:8]}@localhost",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_MNESIA_BASE": f"{self.dir}/mnesia",
            "RABBITMQ_LOG_BASE": f"{self.dir}/log",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{self.dir}/enabled_plugins",
            "RABBITMQ_CONFIG_FILE": f"{self.dir}/rabbitmq.conf",
            "RABBITMQ_PID_FILE": f"{self.dir}/node.pid",
        }
        self.process: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"BROKER_URL": self.url}

    def start(self) -> None:
        env = [f"{name}={value}" for name, value in self.node_env.items()]
        log_path = Path(self.dir, "server.log")
        with log_path.open("a") as log:
            process = subprocess.Popen(
                [
                    "runuser",
                    "-u",
                    "rabbitmq",
                    "--",
                    "env",
                    *env,
                    "/usr/lib/rabbitmq/bin/rabbitmq-server",
                ],
                cwd="/var/lib/rabbitmq",
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.process = process
        # A node boots in 10 to 30 s on this machine.
        wait_until(lambda: self.up() or process.poll() is not None, 120, "RabbitMQ did not start")
        if not self.up():
            raise AssertionError(f"RabbitMQ exited:\n{log_path.read_text()[-3000:]}")

    def up(self) -> bool:
        try:
            with kombu.Connection(self.url, connect_timeout=1) as connection:
                connection.ensure_connection(max_retries=1)
            return True
        except (OSError, kombu.exceptions.OperationalError):
            return False

    def stop(self) -> None:
        """SIGTERM: the node shuts down cleanly, its queues on disk."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def private_broker(aof: bool = False) -> Iterator[PrivateRedis | PrivateRabbitMQ]:
    """A broker of the test's own, of the kind this test run uses (BROKER_URL): a
    redis-server (`aof`: it keeps its data across restarts) or a RabbitMQ node."""
    from harness.brokers import is_rabbitmq

    if is_rabbitmq(os.environ.get("BROKER_URL", "")):
        with _running(PrivateRabbitMQ()) as node:
            yield node
    else:
        with _running(PrivateRedis(aof)) as server:
            yield server
