"""The whole stack as `make up` runs it, for a bench: every line of the Procfile as its
own process (API, pipeline / provider / mail / dead-letter workers, beat, Flower, the
provider sandbox with its webhooks on, the SMTP sink), plus a redis-server of the bench's
own, and the CPU each kind of process used, read from /proc.

Differences from `make up`, each for measuring: free ports instead of 8000/5555/12111/1025;
the broker and cache on a private redis-server (its CPU is then the bench's alone: the
machine's shared Redis serves other runs too), in a db numbered like the bench's; the API
serves `bench.reference_wsgi:app` (the real app plus the reference routes); the workers
load `harness.worker_ready` (a file written on Celery's worker_ready signal) and the
pipeline worker `bench.noop_tasks` (the bare chain); output goes to log files instead of
honcho's terminal; the public rate limit is out of reach (bench.common: every student
comes from 127.0.0.1; the limiter's Redis counter is still paid). Commands, pools,
concurrency and every other setting are the Procfile's and the Settings' defaults
(LOG_LEVEL=INFO, text logs, as `make up`), unless the bench passes others.

PostgreSQL is the machine's shared server: its CPU is that of the backends connected to
the bench database (pg_stat_activity, the bench process's own connections left out);
its background processes (WAL writer, checkpointer…) serve every database and are shown
apart, outside the totals.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import redis
import requests
from sqlalchemy import text

import bench.common as common
from harness.processes import PrivateRedis, free_port, wait_until

PROCFILE = common.ROOT / "Procfile"
# Procfile name → what the tables call it, in the order they list them.
KINDS = {
    "worker": "pipeline worker",
    "provider": "provider worker",
    "mail": "mail worker",
    "deadletters": "dead-letter worker",
    "beat": "beat",
    "flower": "Flower",
    "api": "API",
    "sandbox": "sandbox",
    "mailsink": "SMTP sink",
}
# The development stand-ins for the payment provider and the mail relay: in the stack's
# total (they run with `make up`), and also left out of a second one (a deployment talks
# to Stripe and to a real relay instead).
DEV_STAND_INS = ("sandbox", "SMTP sink")
POSTGRES = "PostgreSQL"
REDIS = "Redis"
# Shown, never added to a total: the cluster's background processes serve every
# database on this shared server, and the load generator is the bench itself.
POSTGRES_BACKGROUND = "PostgreSQL background (whole cluster)"
LOAD_GENERATOR = "load generator + poller (bench)"
# Every process on the machine (/proc/stat): what is left after the above is other work
# on the two shared cores (other engineers' tests), the contention a figure was taken in.
MACHINE = "machine"
WORKERS = ("worker", "provider", "mail", "deadletters")
CHAIN_QUEUES = ("provider", "pipeline")
ALL_QUEUES = ("provider", "pipeline", "notifications", "dead_letter_intake", "maintenance")
# kombu's Redis transport keeps each priority step of a queue in a list of its own.
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def procfile(path: Path = PROCFILE) -> dict[str, str]:
    lines = [line.split(":", 1) for line in path.read_text().splitlines() if line.strip()]
    return {name.strip(): command.strip() for name, command in lines}


def _cpu_seconds(pid: int) -> float:
    return common._cpu_seconds(pid)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((common.HOST, port)) == 0


@dataclass
class Stack:
    """The running stack: its processes by Procfile name, its addresses, its logs."""

    processes: dict[str, subprocess.Popen]
    redis_server: PrivateRedis
    redis_url: str
    api_port: int
    sandbox_url: str
    flower_url: str
    smtp_port: int
    workdir: Path
    env: dict[str, str]
    _redis: redis.Redis | None = field(default=None, repr=False)

    # --- where things are -------------------------------------------------------------

    @property
    def api(self) -> str:
        return f"http://{common.HOST}:{self.api_port}"

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        return self._redis

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def log_lines(self) -> dict[str, int]:
        """Lines each process has logged so far (what INFO costs shows in them)."""
        counts = {}
        for name in self.processes:
            with (self.workdir / f"{name}.log").open("rb") as log:
                counts[name] = sum(
                    chunk.count(b"\n") for chunk in iter(lambda: log.read(1 << 16), b"")
                )
        return counts

    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}

    def queue_depth(self, queues: tuple[str, ...] = CHAIN_QUEUES) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for queue in queues:
            for suffix in PRIORITY_SUFFIXES:
                pipe.llen(queue + suffix)
        return sum(pipe.execute())

    def sandbox_state(self) -> dict:
        return requests.get(f"{self.sandbox_url}/_sandbox/state", timeout=10).json()

    def provider_latency(self, milliseconds: float) -> None:
        """Every provider call waits this long at the sandbox (0: at once)."""
        mode = (
            {"mode": "slow", "delay": milliseconds / 1000} if milliseconds else {"mode": "normal"}
        )
        answer = requests.post(f"{self.sandbox_url}/_sandbox/mode", json=mode, timeout=10)
        answer.raise_for_status()

    # --- CPU --------------------------------------------------------------------------

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each kind of process (its whole tree, ended
        children included), PostgreSQL's bench backends, Redis, the PostgreSQL
        cluster's background and this process."""
        seconds = {
            KINDS[name]: sum(map(_cpu_seconds, common._process_tree(process.pid)))
            for name, process in self.processes.items()
        }
        backends, background = _postgres_pids()
        seconds[POSTGRES] = sum(map(_cpu_seconds, backends))
        assert self.redis_server.process is not None
        seconds[REDIS] = _cpu_seconds(self.redis_server.process.pid)
        seconds[POSTGRES_BACKGROUND] = sum(map(_cpu_seconds, background))
        # This process (its threads: the clients and the poller) and its PostgreSQL
        # connections, which are left out of PostgreSQL's figure.
        seconds[LOAD_GENERATOR] = _cpu_seconds(os.getpid()) + sum(
            map(_cpu_seconds, _postgres_pids(bench=True)[0])
        )
        seconds[MACHINE] = _machine_busy()
        return seconds

    @contextmanager
    def measure(self) -> Iterator[CpuWindow]:
        window = CpuWindow(self)
        window.start()
        try:
            yield window
        finally:
            window.stop()


def _machine_busy() -> float:
    """CPU seconds all processes used since boot: /proc/stat's first line less idle and
    iowait."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / common.TICKS


def _postgres_pids(bench: bool = False) -> tuple[list[int], list[int]]:
    """The backends connected to the bench database (not the bench process's own; with
    `bench`, only those), and the cluster's background processes."""
    with common._engine().connect() as connection:
        rows = connection.execute(
            text(
                "SELECT pid, datname = current_database() AS ours, "
                "coalesce(application_name, '') = :bench AS bench, datname IS NULL AS shared "
                "FROM pg_stat_activity"
            ),
            {"bench": common.BENCH_APPLICATION},
        ).all()
    backends, background = [], []
    for row in rows:
        if row.ours and row.bench == bench:
            backends.append(row.pid)
        elif row.shared and not bench:
            background.append(row.pid)
    return backends, background


@dataclass
class CpuWindow:
    """CPU used by each kind between start() and stop(). PostgreSQL backends are taken
    per pid: one that ended inside the window loses its share (counted in `ended`)."""

    stack: Stack
    seconds: dict[str, float] = field(default_factory=dict)
    elapsed: float = 0.0
    ended_backends: int = 0
    log_lines: dict[str, int] = field(default_factory=dict)  # written inside the window
    _before: dict[str, float] = field(default_factory=dict)
    _lines: dict[str, int] = field(default_factory=dict)
    _backends: dict[int, float] = field(default_factory=dict)
    _started: float = 0.0

    def start(self) -> None:
        self._before = self.stack.cpu()
        self._lines = self.stack.log_lines()
        self._backends = {pid: _cpu_seconds(pid) for pid in _postgres_pids()[0]}
        self._started = time.monotonic()

    def stop(self) -> None:
        after = self.stack.cpu()
        self.elapsed = time.monotonic() - self._started
        backends = {pid: _cpu_seconds(pid) for pid in _postgres_pids()[0]}
        self.seconds = {kind: after[kind] - self._before[kind] for kind in after}
        # Per backend: a connection opened inside the window counts from zero.
        self.seconds[POSTGRES] = sum(
            used - self._backends.get(pid, 0.0) for pid, used in backends.items()
        )
        self.ended_backends = len(self._backends.keys() - backends.keys())
        lines = self.stack.log_lines()
        self.log_lines = {name: lines[name] - self._lines[name] for name in lines}

    @property
    def others(self) -> float:
        """Other work on the machine inside the window, in % of one core: every process's
        CPU less the stack's, the cluster's background and the bench's."""
        ours = sum(used for kind, used in self.seconds.items() if kind != MACHINE)
        return 100 * (self.seconds.get(MACHINE, ours) - ours) / max(self.elapsed, 1e-9)

    def per(self, count: int) -> dict[str, float]:
        """Milliseconds of CPU per unit of work (payment, chain)."""
        return {kind: 1000 * used / max(count, 1) for kind, used in self.seconds.items()}


def stack_env(
    redis_url: str,
    ports: dict[str, int],
    workdir: Path,
    log_level: str,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    env = {
        **os.environ,
        "PATH": f"{common.BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(common.ROOT),
        "DATABASE_URL": common.settings.database_url,
        "BROKER_URL": redis_url,
        "CACHE_URL": redis_url,
        "API_BIND": f"{common.HOST}:{ports['api']}",
        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
        "STRIPE_API_BASE": f"http://{common.HOST}:{ports['sandbox']}",
        "SANDBOX_PORT": str(ports["sandbox"]),
        "SANDBOX_WEBHOOK_URL": f"http://{common.HOST}:{ports['api']}/api/v1/webhooks/stripe",
        "SMTP_URL": f"smtp://{common.HOST}:{ports['mailsink']}",
        "FLOWER_PORT": str(ports["flower"]),
        "FLOWER_DB": str(workdir / "flower.db"),
        "BEAT_SCHEDULE_FILE": str(workdir / "beat-schedule"),
        "LOG_LEVEL": log_level,
    }
    env.update(extra or {})
    return env


def _command(name: str, line: str, workdir: Path, ports: dict[str, int]) -> list[str]:
    command = shlex.split(line)
    if name == "api":
        command = [c if c != "wsgi:app" else "bench.reference_wsgi:app" for c in command]
    elif name == "mailsink":
        command += ["--port", str(ports["mailsink"])]
    elif name in WORKERS:
        include = ["harness.worker_ready"] + (["bench.noop_tasks"] if name == "worker" else [])
        command += ["--include", ",".join(include)]
    return command


@contextmanager
def running_stack(
    log_level: str = "INFO", extra_env: dict[str, str] | None = None
) -> Iterator[Stack]:
    """Start every Procfile process (and a private redis-server), wait until each is
    ready, and stop them all (by process group) at the end."""
    workdir = Path(tempfile.mkdtemp(prefix="tutorflow-bench-stack-"))
    (workdir / "metrics").mkdir()
    lines = procfile()
    missing = set(KINDS) ^ set(lines)
    if missing:
        raise SystemExit(
            f"bench.stack knows the Procfile's processes as {sorted(KINDS)}; "
            f"differs in {sorted(missing)}"
        )
    server = PrivateRedis()
    server.start()
    # The bench's db number on the private server: bench.common's guard refuses db 0.
    db = urlsplit(common.settings.broker_url).path.strip("/") or "5"
    redis_url = f"redis://{common.HOST}:{server.port}/{db}"
    ports = {name: free_port() for name in ("api", "sandbox", "flower", "mailsink")}
    env = stack_env(redis_url, ports, workdir, log_level, extra_env)
    processes: dict[str, subprocess.Popen] = {}
    stack = Stack(
        processes,
        server,
        redis_url,
        ports["api"],
        f"http://{common.HOST}:{ports['sandbox']}",
        f"http://{common.HOST}:{ports['flower']}",
        ports["mailsink"],
        workdir,
        env,
    )
    try:
        for name in KINDS:
            own = {**env, "HARNESS_READY_FILE": str(workdir / f"{name}.ready")}
            with (workdir / f"{name}.log").open("w") as log:
                processes[name] = subprocess.Popen(
                    _command(name, lines[name], workdir, ports),
                    cwd=common.ROOT,
                    env=own,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, stopped as a whole
                )
        _wait_ready(stack)
        yield stack
    finally:
        _stop(processes)
        if stack._redis is not None:
            stack._redis.close()
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def _http_ok(url: str, **kwargs: object) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return requests.get(url, timeout=2, **kwargs).ok  # type: ignore[arg-type]
        except requests.RequestException:
            return False

    return check


def _wait_ready(stack: Stack) -> None:
    checks: dict[str, Callable[[], bool]] = {
        "api": _http_ok(f"{stack.api}/healthz"),
        "sandbox": _http_ok(f"{stack.sandbox_url}/_sandbox/health"),
        "flower": _http_ok(f"{stack.flower_url}/healthcheck"),
        "mailsink": lambda: _listening(stack.smtp_port),
        "beat": lambda: (
            (stack.workdir / "beat-schedule").exists() or any(stack.workdir.glob("beat-schedule*"))
        ),
        **{name: (lambda n=name: (stack.workdir / f"{n}.ready").exists()) for name in WORKERS},
    }
    deadline = time.monotonic() + 90
    waiting = dict(checks)
    while waiting and time.monotonic() < deadline:
        for name, check in list(waiting.items()):
            if stack.processes[name].poll() is not None:
                raise AssertionError(f"{name} exited:\n{stack.log(name)[-3000:]}")
            if check():
                del waiting[name]
        time.sleep(0.1)
    if waiting:
        raise AssertionError(f"not ready after 90 s: {sorted(waiting)}")


def _stop(processes: dict[str, subprocess.Popen]) -> None:
    for process in processes.values():
        if process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    for process in processes.values():
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def wait_until_quiet(stack: Stack, timeout: float = 60.0) -> bool:
    """No message waits in any queue: what one step left does not land in the next."""
    try:
        wait_until(lambda: stack.queue_depth(ALL_QUEUES) == 0, timeout, "")
    except AssertionError:
        return False
    return True
