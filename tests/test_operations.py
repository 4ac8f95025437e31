"""Operations: the compose file matches the Procfile and the config, the CLI simulates."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROCFILE = dict(
    line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()
)
CONFIG_SOURCES = ["core/config.py", "gunicorn.conf.py", "flowerconfig.py", "celeryconfig.py"]


def read_variables() -> set[str]:
    """Every environment variable the processes read."""
    pattern = re.compile(
        r"""(?:_env|_int|_float|environ\.get|environ\.setdefault)\(\s*"([A-Z_]+)"""
    )
    found = set()
    for source in CONFIG_SOURCES:
        found |= set(pattern.findall((ROOT / source).read_text()))
    return found | {"REMAP_SIGTERM", "PROMETHEUS_MULTIPROC_DIR"}  # read by Celery, prometheus


def test_every_procfile_process_runs_the_same_command_in_compose():
    services = COMPOSE["services"]
    for name, command in PROCFILE.items():
        assert name in services, f"{name} is in the Procfile but not in docker-compose.yml"
        assert services[name]["command"] == shlex.split(command), name


def test_every_app_service_command_exists():
    for name, service in COMPOSE["services"].items():
        if "command" not in service or service.get("image", "").startswith(("postgres", "redis")):
            continue
        executable = service["command"][0]
        assert shutil.which(executable) or (ROOT / ".venv/bin" / executable).exists(), name


def test_compose_defines_only_variables_the_app_reads_and_all_secrets():
    read = read_variables()
    for name, service in COMPOSE["services"].items():
        if service.get("image", "").startswith(("postgres", "redis")):
            continue
        env = service.get("environment", {})
        unknown = set(env) - read
        assert not unknown, f"{name} sets variables nothing reads: {unknown}"
        for secret in ("DATABASE_URL", "REDIS_URL", "ADMIN_TOKEN", "WEBHOOK_SECRET"):
            assert secret in env, f"{name} lacks {secret}"


def test_redis_keeps_the_broker_across_restarts_and_one_beat_runs():
    redis_command = COMPOSE["services"]["redis"]["command"]
    assert "--appendonly" in redis_command and "yes" in redis_command
    assert COMPOSE["services"]["beat"]["deploy"]["replicas"] == 1
    assert COMPOSE["services"]["api"]["environment"]["REMAP_SIGTERM"] == "SIGQUIT"


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
