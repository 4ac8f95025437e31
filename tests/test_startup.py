"""`make up` as a developer sees it: its launcher (scripts/up.py) runs the real Procfile
— gunicorn, the four workers, beat, Flower, the provider sandbox, the mail sink — on
ports of the test's own and a redis-server of its own. Each process says once that it
is ready, and where; nothing warns that the project could avoid; Ctrl-C (SIGINT to the
launcher's process group, as a terminal sends it) ends everything with exit status 0.
A process that ends on its own, or exits otherwise when asked to stop, makes the exit
status non-zero."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import pytest
import requests

from harness.processes import free_port, private_redis

pytestmark = pytest.mark.worker

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"
NAMES = [line.split(":", 1)[0] for line in PROCFILE.read_text().splitlines() if line.strip()]
WORKERS = {"worker": "pipeline", "provider": "provider", "deadletters": "dead_letter_intake"}
# A line as honcho prints it: "10:01:51 api         | <the process's line>".
PREFIXED = re.compile(r"^\d\d:\d\d:\d\d (?P<name>\S+)\s*\| (?P<text>.*)$")
# The one warning the project cannot avoid, and only as root: Celery's to a worker run
# with superuser privileges (docs/operations.md, "Startup").
AS_ROOT = "WARNING py.warnings SecurityWarning: You're running the worker with superuser"
# What the startup printed before: banners, task lists, plugin lines, Flower's failed
# inspections, the development server's warning, the workers' mingle.
NOISE = (
    "setup plugin",
    "Registered tasks",
    "Inspect method",
    "development server",
    "[tasks]",
    "--- ***** -----",
    "mingle",
    "Visit me at",
    "Booting worker",
    "started (pid=",
)


class Launcher:
    """scripts/up.py in its own session (a terminal's foreground process group), its
    output read line by line."""

    def __init__(self, procfile: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scripts.up", "--procfile", str(procfile)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.ended = False  # its output closed: it has ended
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: predicate() or self.ended, timeout) or (
                self.ended and not predicate()
            ):
                raise AssertionError(f"{what}; the launcher printed:\n" + "\n".join(self.lines))

    def of(self, name: str) -> list[str]:
        """The lines process `name` printed, without honcho's prefix."""
        matches = (PREFIXED.match(line) for line in list(self.lines))
        return [m["text"] for m in matches if m and m["name"] == name]

    def ready(self, name: str) -> list[str]:
        return [line for line in self.of(name) if " ready: " in f" {line}"]

    def interrupt(self) -> int:
        """Ctrl-C: SIGINT to the launcher's process group; its exit status."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout=60)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def stack_env(tmp_path: Path, redis_env: dict[str, str]) -> dict[str, str]:
    api, flower, sandbox, mailsink = (free_port() for _ in range(4))
    return {
        **os.environ,
        **redis_env,
        "API_BIND": f"127.0.0.1:{api}",
        "FLOWER_PORT": str(flower),
        "SANDBOX_PORT": str(sandbox),
        "SANDBOX_WEBHOOK_URL": f"http://127.0.0.1:{api}/api/v1/webhooks/stripe",
        "STRIPE_API_BASE": f"http://127.0.0.1:{sandbox}",
        "MAILSINK_PORT": str(mailsink),
        "SMTP_URL": f"smtp://127.0.0.1:{mailsink}",
        "FLOWER_DB": str(tmp_path / "flower" / "flower.db"),
        "BEAT_SCHEDULE_FILE": str(tmp_path / "beat-schedule"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "LOG_LEVEL": "INFO",
        "LOG_JSON": "0",
    }


def test_make_up_says_ready_once_per_process_warns_of_nothing_and_ctrl_c_exits_0(engine, tmp_path):
    with private_redis() as redis_server:
        env = stack_env(tmp_path, redis_server.env)
        launcher = Launcher(PROCFILE, env)
        try:
            launcher.wait_for(
                lambda: all(launcher.ready(name) for name in NAMES),
                timeout=90,
                what="not every process said it was ready",
            )
            children = descendants(launcher.process.pid)
            api = f"http://{env['API_BIND']}"
            assert requests.get(f"{api}/readyz", timeout=10).status_code == 200  # Alembic too
            launcher.wait_for(
                lambda: any("GET /readyz 200" in line for line in launcher.of("api")),
                timeout=10,
                what="no request line for /readyz",
            )
            status = launcher.interrupt()
        finally:
            launcher.stop()

    lines = launcher.lines
    assert status == 0, "\n".join(lines)
    assert lines[-1] == f"stopped: {len(NAMES)} processes exited cleanly"
    assert not [pid for pid in children if alive(pid)]

    # One ready line per process, saying where.
    for name in NAMES:
        assert len(launcher.ready(name)) == 1, (name, launcher.ready(name))
    assert f"api ready: {api}/ (docs {api}/docs;" in launcher.ready("api")[0]
    assert f"flower ready: http://127.0.0.1:{env['FLOWER_PORT']}" in launcher.ready("flower")[0]
    assert f"ready: {env['STRIPE_API_BASE']} " in launcher.ready("sandbox")[0]
    assert f"ready: {env['SMTP_URL']} " in launcher.ready("mailsink")[0]
    assert f" jobs, sent to {redis_server.url}" in launcher.ready("beat")[0]
    for name, queue in {**WORKERS, "mail": "notifications"}.items():
        line = launcher.ready(name)[0].replace("maintenance, ", "")
        assert f"ready: queues {queue} (" in line and line.endswith(f" on {redis_server.url}")

    # No warning the project could avoid, and none of the old noise.
    warned = [line for line in lines if re.search("warn|error|critical|traceback", line, re.I)]
    expected = [AS_ROOT] * (len(WORKERS) + 1) if os.geteuid() == 0 else []
    assert [AS_ROOT for line in warned if AS_ROOT in line] == expected
    assert [line for line in warned if AS_ROOT not in line] == []
    assert [line for line in lines if any(noise in line for noise in NOISE)] == []

    # A request line names each thing once; the JSON line keeps them as fields.
    [request] = [line for line in launcher.of("api") if "GET /readyz" in line]
    assert re.search(r" GET /readyz 200 duration_ms=[\d.]+$", request), request


CRASHER = "python -c 'import time; time.sleep({0}); raise SystemExit({1})'"
# Exits 5 when asked to stop: a stop that is not clean.
STUBBORN = (
    "python -c 'import signal, sys, threading; "
    'signal.signal(signal.SIGTERM, lambda *_: sys.exit(5)); print("stubborn ready: here", '
    "flush=True); threading.Event().wait()'"
)


def _procfile(tmp_path: Path, **lines: str) -> Path:
    procfile = tmp_path / "Procfile"
    procfile.write_text("".join(f"{name}: {command}\n" for name, command in lines.items()))
    return procfile


def test_a_process_that_ends_on_its_own_stops_the_stack_with_its_status(tmp_path):
    env = stack_env(tmp_path, {})
    procfile = _procfile(tmp_path, mailsink="python -m sandbox.mail", crasher=CRASHER.format(3, 3))
    launcher = Launcher(procfile, env)
    try:
        launcher.wait_for(lambda: bool(launcher.ready("mailsink")), 30, "no mail sink")
        children = descendants(launcher.process.pid)
        status = launcher.process.wait(timeout=30)
    finally:
        launcher.stop()
    assert status == 3, "\n".join(launcher.lines)
    assert launcher.lines[-1] == "crasher ended on its own (exit status 3): stack stopped"
    assert not [pid for pid in children if alive(pid)]


def test_a_process_that_stops_uncleanly_makes_ctrl_c_exit_non_zero(tmp_path):
    env = stack_env(tmp_path, {})
    procfile = _procfile(tmp_path, mailsink="python -m sandbox.mail", stubborn=STUBBORN)
    launcher = Launcher(procfile, env)
    try:
        launcher.wait_for(
            lambda: bool(launcher.ready("mailsink") and launcher.ready("stubborn")),
            30,
            "not both ready",
        )
        status = launcher.interrupt()
    finally:
        launcher.stop()
    assert status == 1, "\n".join(launcher.lines)
    assert launcher.lines[-1] == "stopped, but not cleanly: stubborn (5)"


def test_ctrl_c_in_a_terminal_reaches_the_launcher_alone_and_make_exits_0(tmp_path):
    """In a terminal, Ctrl-C is SIGINT to the whole foreground process group: make would
    die of it, whatever the launcher answers (and the shell that ran make stops there).
    The launcher takes the foreground for its own group, so make waits and gets 0."""
    procfile = _procfile(tmp_path, mailsink="python -m sandbox.mail")
    makefile = tmp_path / "Makefile"
    makefile.write_text(f"up:\n\t@{sys.executable} -m scripts.up --procfile {procfile}\n")
    env = stack_env(tmp_path, {})
    command = f"make --no-print-directory -f {makefile} up; echo caller got $?"
    pid, terminal = pty.fork()
    if pid == 0:  # the child: a shell on the terminal, running make
        os.chdir(ROOT)
        os.execve("/bin/bash", ["bash", "-c", command], env)
    printed = ""

    def read_until(text: str, timeout: float) -> None:
        nonlocal printed
        deadline = time.monotonic() + timeout
        while text not in printed and time.monotonic() < deadline:
            if select.select([terminal], [], [], 0.2)[0]:
                try:
                    printed += os.read(terminal, 65536).decode(errors="replace")
                except OSError:  # the terminal closed: everyone has ended
                    break
        assert text in printed, printed

    try:
        read_until("mail sink ready: ", 30)
        os.write(terminal, b"\x03")  # Ctrl-C
        read_until("caller got ", 30)
        read_until("\n", 5)
    finally:
        with suppress(ChildProcessError):
            os.waitpid(pid, 0)
        os.close(terminal)
    assert "stopped: 1 process exited cleanly" in printed
    assert re.search(r"caller got 0\r?\n", printed), printed
