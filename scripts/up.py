"""`python -m scripts.up [--procfile Procfile]`: `make up`'s launcher. honcho's process
manager runs every Procfile line, each output line prefixed with the process's name;
Ctrl-C (or SIGTERM) stops them all. What it adds to `honcho start`:

- An exit status that says how the stack ended. 0: it was asked to stop and every
  process then exited 0 — each stops cleanly on SIGTERM (gunicorn, Celery's warm
  shutdown, Flower, the two sandboxes). Otherwise 1, or the status of the process that
  ended on its own first (honcho then stops the others): a stack that stops by itself
  has failed, even if that process said 0. `honcho start` answers 130 or 143 to every
  Ctrl-C (`make: *** [up] Error 143`), and hides a process that crashed meanwhile.
- Each command runs under `exec`: the process honcho watches and signals is the command
  itself, not a shell around it, so its exit status is the command's own.
- Ctrl-C reaches the launcher alone. A terminal sends SIGINT to its whole foreground
  process group, make included, and make, killed by it, ends `make up` with status 130
  whatever its recipe answers. Like a shell starting a job, the launcher takes a
  process group of its own and makes it the terminal's foreground group (given back
  when it ends): make then waits and answers the launcher's status.
- honcho's routine lines (each process's pid as it starts, "sending SIGTERM to …", every
  "stopped (rc=0)") are left out: each process says once that it is ready, and where
  (docs/operations.md, "Startup"); an unclean end is still printed.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import honcho.manager
from honcho.environ import parse_procfile
from honcho.manager import Manager
from honcho.printer import Message, Printer

# How long the processes get to stop after SIGTERM before honcho kills them (its own
# default is 5 s): gunicorn's graceful timeout is 10 s (gunicorn.conf.py).
honcho.manager.KILL_WAIT = 12

_ROUTINE = re.compile(r" started \(pid=\d+\)$| stopped \(rc=0\)$|^sending SIGTERM to ")


class QuietPrinter(Printer):
    """honcho's printer without its routine system lines."""

    def write(self, message: Message) -> None:
        if message.name == "system" and _ROUTINE.search(str(message.data).rstrip("\n")):
            return
        super().write(message)


class StackManager(Manager):
    """honcho's manager, noting why the stack stopped: a stop request (the signal
    handler's terminate() comes while every process still runs) or a process that
    ended on its own (honcho's terminate() once it has seen that process stop)."""

    def __init__(self, printer: Printer) -> None:
        super().__init__(printer)
        self.stop_requested = False
        self.ended_first: str | None = None

    def terminate(self) -> None:
        if not self._terminating:
            ended = [name for name, p in self._processes.items() if "returncode" in p]
            if ended:
                self.ended_first = ended[0]
            else:
                self.stop_requested = True
        super().terminate()

    def exit_codes(self) -> dict[str, int | None]:
        # honcho keeps each process's exit status in its process table (honcho 2.0).
        processes: dict[str, dict[str, Any]] = self._processes
        return {name: p.get("returncode") for name, p in processes.items()}


def exit_status(manager: StackManager) -> tuple[int, str]:
    """The launcher's exit status and its last line."""
    codes = manager.exit_codes()
    if manager.ended_first is not None:
        code = codes[manager.ended_first]
        return (code if code and code > 0 else 1), (
            f"{manager.ended_first} ended on its own (exit status {code}): stack stopped"
        )
    unclean = {name: code for name, code in codes.items() if code != 0}
    if unclean:
        listed = ", ".join(f"{name} ({code})" for name, code in unclean.items())
        return 1, f"stopped, but not cleanly: {listed}"
    return 0, f"stopped: {_processes(len(codes))} exited cleanly"


def _processes(count: int) -> str:
    return f"{count} process{'' if count == 1 else 'es'}"


@contextmanager
def foreground_of_its_own() -> Iterator[None]:
    """The launcher in a process group of its own, the terminal's foreground group
    while it runs (when it was started in the foreground of one)."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd) or os.tcgetpgrp(fd) != os.getpgrp():
        yield  # no terminal, or started in the background: nothing to take
        return
    given_back_to = os.tcgetpgrp(fd)
    os.setpgid(0, 0)
    # A background group that sets the foreground gets SIGTTOU: ignored meanwhile.
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(fd, os.getpgrp())
        yield
    finally:
        os.tcsetpgrp(fd, given_back_to)
        signal.signal(signal.SIGTTOU, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the Procfile: `make up`.")
    parser.add_argument("--procfile", default="Procfile", type=Path)
    args = parser.parse_args(argv)
    processes = parse_procfile(args.procfile.read_text()).processes
    manager = StackManager(QuietPrinter(sys.stdout))
    # The Procfile's commands (gunicorn, celery) come from this Python's environment.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1"}
    for name, command in processes.items():
        manager.add_process(name, f"exec {command}", env=env)
    with foreground_of_its_own():
        manager.loop()
    status, summary = exit_status(manager)
    print(summary, file=sys.stderr if status else sys.stdout, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
