"""What the in-process profiles share (bench.eager_profile, bench.api_profile,
bench.publish_profile): their options, the cProfile tables, and machine instructions
counted by valgrind's callgrind (`--instructions`).

A script reruns itself under callgrind with collection off (`rerun_under_callgrind`)
and counts only the blocks it means (`Instructions.count`). The count of the same code
repeats to about 0.1 % whatever else the machine does, where its CPU time moves by
±15 % within an hour on this two-core machine (BENCHMARKS.md, "Issue 25, tenth
session"). Under callgrind a program runs about 50 times slower: keep the work small.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Set in the environment of the run that valgrind starts.
UNDER_CALLGRIND = "BENCH_UNDER_CALLGRIND"


class Instructions:
    """The main thread's instructions over a block, counted by callgrind when this
    process runs under it (else 0): counters zeroed and collection switched on at the
    block's start, read and switched off at its end (callgrind_control, which reaches
    the process through valgrind's gdbserver)."""

    def __init__(self) -> None:
        self.active = os.environ.get(UNDER_CALLGRIND) == "1"

    def _control(self, *options: str) -> str:
        return subprocess.run(
            ["callgrind_control", *options, str(os.getpid())],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    @contextmanager
    def count(self) -> Iterator[list[int]]:
        counted = [0]
        if not self.active:
            yield counted
            return
        self._control("--zero")
        self._control("--instr=on")
        try:
            yield counted
        finally:
            totals = self._control("-e")
            self._control("--instr=off")
            # "   Th 1  71,652,595": thread 1 is this process's main thread.
            found = re.search(r"^\s*Th 1\s+([\d,]+)", totals, re.MULTILINE)
            counted[0] = int(found.group(1).replace(",", "")) if found else 0


def rerun_under_callgrind(
    module: str, arguments: list[str], *, drop_env: tuple[str, ...] = ()
) -> None:
    """`python -m module arguments` again, under callgrind (instrumentation off until a
    block asks); exits with its status. `drop_env`: variables this process set for
    itself that the rerun must choose afresh (a free port, say)."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("--instructions needs valgrind (Debian: apt-get install valgrind)")
    env = {key: value for key, value in os.environ.items() if key not in drop_env}
    # The same string hashes in every run: dict and set layouts, hence the count, repeat.
    env.update({UNDER_CALLGRIND: "1", "PYTHONHASHSEED": "0"})
    with tempfile.TemporaryDirectory(prefix="tutorflow-callgrind-") as where:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            "--separate-threads=yes",
            f"--callgrind-out-file={where}/callgrind.%p",
            f"--log-file={where}/valgrind.log",
            sys.executable,
            "-m",
            module,
            *arguments,
        ]
        done = subprocess.run(command, env=env, check=False)
        if done.returncode != 0:
            print(Path(where, "valgrind.log").read_text()[-3000:], file=sys.stderr)
            sys.exit(done.returncode)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every in-process profile takes."""
    parser.add_argument("--payments", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20, help="payments before the clock")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--output", help="write the cProfile stats here (.prof)")
    parser.add_argument(
        "--no-cprofile",
        action="store_true",
        help="no cProfile pass (to sample the plain run from outside, with py-spy)",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions under valgrind's callgrind instead of timing (--payments 10)",
    )


def counted_instead(
    args: argparse.Namespace, module: str, extra: list[str], *, drop_env: tuple[str, ...] = ()
) -> bool:
    """With --instructions: `module` run again under callgrind (10 payments unless
    --payments says), with its own `extra` options (and `drop_env`, as
    `rerun_under_callgrind` takes it); True once it has run."""
    if not args.instructions:
        return False
    payments = args.payments if "--payments" in sys.argv else 10
    rerun_under_callgrind(
        module,
        [
            *("--payments", str(payments), "--warmup", str(args.warmup)),
            "--no-cprofile",
            *extra,
        ],
        drop_env=drop_env,
    )
    return True


def print_profile(profile: cProfile.Profile, args: argparse.Namespace, what: str) -> None:
    """The top of the cProfile pass by own and by cumulative time (and its stats file)."""
    if args.no_cprofile:
        return
    if args.output:
        profile.dump_stats(args.output)
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats(order).print_stats(args.top)
        print(f"\n## top {args.top} by {order} ({what})\n")
        print(out.getvalue().split("\n", 6)[-1])
