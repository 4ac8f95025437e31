"""Operations: the compose file matches the Procfile and the config, the CLI simulates."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import make_url

from celeryconfig import UnsafeDeliverySettings, check_delivery_settings
from core.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
# Services that run someone else's image with its own configuration (Patroni's image is
# Debian's package on postgres:15, ops/patroni/Dockerfile).
THIRD_PARTY = ("postgres", "redis", "prom/", "quay.io/coreos/etcd", "tutorflow-patroni")
PROCFILE = dict(
    line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()
)


class RecordingEnviron(dict[str, str]):
    """An empty environment that notes every name Settings.from_env asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, name, default=None):  # type: ignore[override]
        self.asked.add(name)
        return super().get(name, default)


def read_variables() -> set[str]:
    """Every environment variable the processes read: the Settings object's, and the two
    read by libraries themselves (Celery, prometheus_client)."""
    environ = RecordingEnviron()
    Settings.from_env(environ)
    sandbox = {"SANDBOX_HOST", "SANDBOX_PORT", "SANDBOX_WEBHOOK_URL"}  # python -m sandbox
    return environ.asked | sandbox | {"REMAP_SIGTERM", "PROMETHEUS_MULTIPROC_DIR"}


def test_only_the_settings_object_reads_the_environment():
    """Nothing but core/config.py reads os.environ in the code the services run."""
    runtime_code = [
        p
        for package in ("actions", "app", "core", "domain", "models", "tasks")
        for p in (ROOT / package).rglob("*.py")
    ] + [ROOT / name for name in ("celeryconfig.py", "flowerconfig.py", "wsgi.py")]
    readers = [
        str(p.relative_to(ROOT))
        for p in runtime_code
        if re.search(r"os\.environ|os\.getenv", p.read_text()) and p.name != "config.py"
    ]
    assert readers == []


def test_every_procfile_process_runs_the_same_command_in_compose():
    services = COMPOSE["services"]
    for name, command in PROCFILE.items():
        assert name in services, f"{name} is in the Procfile but not in docker-compose.yml"
        assert services[name]["command"] == shlex.split(command), name


def test_every_app_service_command_exists():
    for name, service in COMPOSE["services"].items():
        if "command" not in service or service.get("image", "").startswith(THIRD_PARTY):
            continue
        executable = service["command"][0]
        assert shutil.which(executable) or (ROOT / ".venv/bin" / executable).exists(), name


def test_compose_defines_only_variables_the_app_reads_and_all_secrets():
    read = read_variables()
    for name, service in COMPOSE["services"].items():
        if service.get("image", "").startswith(THIRD_PARTY):
            continue
        env = service.get("environment", {})
        unknown = set(env) - read
        assert not unknown, f"{name} sets variables nothing reads: {unknown}"
        for secret in ("DATABASE_URL", "BROKER_URL", "ADMIN_TOKEN", "JWT_SECRET"):
            assert secret in env, f"{name} lacks {secret}"


def test_redis_keeps_the_broker_across_restarts_and_one_beat_runs():
    redis_command = COMPOSE["services"]["redis"]["command"]
    assert "--appendonly" in redis_command and "yes" in redis_command
    assert COMPOSE["services"]["beat"]["deploy"]["replicas"] == 1
    assert COMPOSE["services"]["api"]["environment"]["REMAP_SIGTERM"] == "SIGQUIT"


def test_the_patroni_profile_is_the_cluster_the_failover_tests_run():
    """ops/patroni.env points every process at all three servers, keeping the writable
    one; the servers replicate as harness/patroni.py's do (synchronous, strict), with the
    timings whose failover docs/across-hosts.md measured."""
    from harness import patroni

    services = COMPOSE["services"]
    servers = [name for name, s in services.items() if s.get("profiles") == ["patroni"]]
    assert sorted(servers) == ["etcd-1", "etcd-2", "etcd-3", "pg-1", "pg-2", "pg-3"]
    env = dict(
        line.split("=", 1)
        for line in (ROOT / "ops/patroni.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    url = make_url(env["DATABASE_URL"])
    assert url.query["host"] == ("pg-1:5432", "pg-2:5432", "pg-3:5432")
    assert url.query["target_session_attrs"] == "read-write"
    assert env["DB_POOL_PRE_PING"] == "1"
    dcs = yaml.safe_load((ROOT / "ops/patroni/patroni.yml").read_text())["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] and dcs["synchronous_mode_strict"]
    assert (dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"]) == (
        patroni.TTL,
        patroni.LOOP_WAIT,
        patroni.RETRY_TIMEOUT,
    )
    assert "${DATABASE_URL:-" in (ROOT / "docker-compose.yml").read_text()


def test_logs_carry_the_correlation_id_as_json(capsys):
    import json
    import logging

    from core.logs import configure_logging, log_context

    configure_logging("INFO", json_lines=True)
    with log_context(correlation_id="pay-123", task_id="task-9"):
        logging.getLogger("tutorflow.test").info("card 4111 1111 1111 1111 by ana@example.com")
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["correlation_id"] == "pay-123"
    assert line["task_id"] == "task-9"
    assert {"ts", "level", "logger"} <= set(line)
    assert "4111 1111" not in line["message"] and line["message"].startswith("card ****1111")
    assert "a***@example.com" in line["message"]


def _settings(**environ: str) -> Settings:
    return Settings.from_env({"BROKER_URL": "redis://127.0.0.1:6379/0", **environ})


def test_a_visibility_timeout_a_retry_could_outlast_is_refused_at_startup():
    unsafe = _settings(CELERY_VISIBILITY_TIMEOUT="200")  # 120 s run + 150 s countdown
    with pytest.raises(UnsafeDeliverySettings, match=r"must exceed .* 270 s in all"):
        check_delivery_settings(unsafe)
    check_delivery_settings(_settings())  # the defaults: 300 > 270
    check_delivery_settings(_settings(CELERY_VISIBILITY_TIMEOUT="200", BROKER_URL="amqp://x//"))
    # A real worker refuses to start, and says why.
    refused = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "celeryapp", "worker", "--help"],
        env={**os.environ, "CELERY_VISIBILITY_TIMEOUT": "200", "CELERY_RETRY_BACKOFF": "2"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert refused.returncode != 0
    assert "CELERY_VISIBILITY_TIMEOUT=200 s must exceed" in refused.stderr


def test_postgresql_timeouts_a_step_could_outwait_its_soft_time_limit_are_refused():
    """A step blocked on a row lock past its hard time limit is killed, not retried, and
    each redelivery counts as a lost worker: the workers' PostgreSQL timeouts must end a
    wait first, under the soft limit (30 s for a 40 s limit)."""
    with pytest.raises(UnsafeDeliverySettings, match=r"WORKER_LOCK_TIMEOUT_MS=30000 must"):
        check_delivery_settings(
            _settings(CELERY_TASK_TIME_LIMIT="40", WORKER_LOCK_TIMEOUT_MS="30000")
        )
    with pytest.raises(UnsafeDeliverySettings, match=r"WORKER_STATEMENT_TIMEOUT_MS=60000 must"):
        check_delivery_settings(_settings(CELERY_TASK_TIME_LIMIT="40"))
    for broker in ("redis://127.0.0.1:6379/0", "amqp://x//"):
        check_delivery_settings(
            _settings(
                BROKER_URL=broker,
                CELERY_TASK_TIME_LIMIT="40",
                WORKER_LOCK_TIMEOUT_MS="5000",
                WORKER_STATEMENT_TIMEOUT_MS="29999",
            )
        )
