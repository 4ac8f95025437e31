"""py-spy profiles of the stack's processes under a bench's load, and their summaries.

py-spy (a dev tool: `pip install -e '.[dev]'`) samples a running Python process from
outside, its pool children too (`--subprocesses`); only samples holding the GIL are
kept (`--gil`), so a sample is Python running, not waiting. `recording()` profiles each
process for the length of a bench step; `summarize()` turns py-spy's collapsed stacks
into the tables BENCHMARKS.md quotes: where the samples were (self), which functions
they were under (inclusive), and the project's own functions, as shares of the
process's samples and, applied to the kind's CPU measured from /proc in the same
window, as CPU milliseconds per payment.

    python -m bench.pyspy FILE.raw [--cpu-ms N]   # a summary again
    python -m bench.pyspy FILE.raw --cpu-ms N --under _compile_w_cache   # one function's share
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RATE = 100  # samples per second per thread
FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# Path prefixes dropped from frames: the venv's site-packages, the stdlib, the project.
PREFIXES = re.compile(r"^.*(?:site-packages|python3\.\d+|wt-[^/]+|/work/main)/")


def executable() -> str | None:
    """py-spy from the venv beside this Python, else from PATH; None if absent."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextmanager
def recording(
    pids: dict[str, int], directory: Path, seconds: float, children: set[str]
) -> Iterator[None]:
    """py-spy records each named process for `seconds` into DIRECTORY/NAME.raw (with its
    pool children for the names in `children`); waits for the files on exit."""
    spy = executable()
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install -e '.[dev]'")
    directory.mkdir(parents=True, exist_ok=True)
    running = []
    for name, pid in pids.items():
        command = [
            spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(RATE),
            "--duration",
            str(max(1, round(seconds))),
            "--format",
            "raw",
            "--output",
            str(directory / f"{name}.raw"),
            # Only samples holding the GIL: py-spy's idle detection misses threads that
            # wait (a gunicorn thread in its queue, a worker in psycopg2), and a thread
            # waiting in C releases the GIL. A process runnable but not running (two
            # busy cores) still counts: shares, not absolute times, are read from it.
            "--gil",
        ]
        if name in children:
            command.append("--subprocesses")
        running.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    try:
        yield
    finally:
        for process in running:
            try:
                process.wait(timeout=seconds + 60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _frame(raw: str) -> str:
    """`execute (/…/site-packages/sqlalchemy/engine/base.py:1418)` → `execute
    (sqlalchemy/engine/base.py)`: one entry per function, whatever its line."""
    match = FRAME.match(raw.strip())
    if match is None:
        return raw.strip()
    return f"{match['function']} ({PREFIXES.sub('', match['file'])})"


PROCESS = re.compile(r"^process (?P<pid>\d+):")
# The project's own packages: where the inclusive table's second half looks.
PROJECT = ("actions/", "app/", "core/", "domain/", "models/", "tasks/", "sandbox/", "bench/")
TRUNK = 0.9  # frames under this share of the samples or more are the process's trunk


@dataclass
class Stack:
    process: str  # "main", "child <pid>", or "" when py-spy named none
    frames: list[str]  # outermost first
    samples: int


def read(raw_file: Path, root_pid: int | None = None) -> list[Stack]:
    """py-spy's collapsed stacks (or a trimmed file's); py-spy's process frame becomes
    `process` (the root pid is "main", any other a pool "child"), its thread frames go."""
    stacks = []
    for line in raw_file.read_text(errors="replace").splitlines():
        text, _, count = line.rpartition(" ")
        if not text or not count.isdigit():
            continue
        process, frames = "", []
        for raw in text.split(";"):
            found = PROCESS.match(raw)
            if found:
                pid = int(found["pid"])
                process = "main" if root_pid in (None, pid) else f"child {pid}"
            elif raw == "main" or raw.startswith("child"):
                process = raw  # a trimmed file's own marker
            elif not raw.startswith("thread ("):
                frames.append(_frame(raw))
        stacks.append(Stack(process, frames, int(count)))
    return stacks


def package(frame: str) -> str:
    """`execute (sqlalchemy/engine/base.py)` → `sqlalchemy`; `wait (threading.py)` →
    `threading`; the project's packages by name."""
    where = frame.rsplit("(", 1)[-1].rstrip(")")
    first = where.split("/", 1)[0]
    return first.removesuffix(".py") or where


def summarize(
    raw_file: Path,
    cpu_ms: float | None = None,
    root_pid: int | None = None,
    top: int = 25,
    title: str | None = None,
) -> str:
    """The tables: self, inclusive (the trunk left out) and the project's own functions,
    each row a share of the samples and, given `cpu_ms` (the kind's CPU per payment,
    measured from /proc in the same window), that share of it in ms per payment."""
    stacks = read(raw_file, root_pid)
    total = sum(s.samples for s in stacks)
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    under: Counter[str] = Counter()
    # Per process group (the main process; the pool children): a frame that nearly every
    # sample of its group sits under is the group's trunk (bootstrap, event loop).
    groups: Counter[str] = Counter()
    grouped: dict[str, Counter[str]] = {}
    for stack in stacks:
        group = "pool children" if stack.process.startswith("child") else "main process"
        groups[group] += stack.samples
        if stack.frames:
            own[stack.frames[-1]] += stack.samples
            packages[package(stack.frames[-1])] += stack.samples
        for frame in set(stack.frames):
            under[frame] += stack.samples
            grouped.setdefault(group, Counter())[frame] += stack.samples
    trunk = {
        frame
        for group, counter in grouped.items()
        for frame, n in counter.items()
        if n >= TRUNK * groups[group]
    }
    measured = f"; measured CPU {cpu_ms:.1f} ms per payment" if cpu_ms is not None else ""
    lines = [
        f"# {title or raw_file.stem}",
        "",
        f"{total:,} samples holding the GIL (py-spy --gil, {RATE} Hz){measured}.",
        "",
    ]
    if len(groups) > 1:
        lines.append(
            "Samples by process: "
            + ", ".join(f"{name} {100 * n / max(total, 1):.0f}%" for name, n in groups.items())
            + "."
        )
        lines.append("")

    def block(heading: str, rows: list[tuple[str, int]], quote: bool = True) -> None:
        lines.extend([heading, "", "| % samples | ms / payment | function |", "|---:|---:|---|"])
        for frame, count in rows[:top]:
            share = count / max(total, 1)
            cost = f"{share * cpu_ms:.2f}" if cpu_ms is not None else "-"
            lines.append(f"| {100 * share:.1f} | {cost} | {f'`{frame}`' if quote else frame} |")
        lines.append("")

    block("## self, by package (where the CPU was, summed)", packages.most_common(), False)
    block("## self (the function on the CPU)", own.most_common())
    branches = [(f, n) for f, n in under.most_common() if f not in trunk]
    block(
        f"## inclusive (on the stack; each process's trunk, in ≥ {TRUNK:.0%} of its "
        "samples, left out)",
        branches,
    )
    ours = [(f, n) for f, n in under.most_common() if f.split("(")[-1].startswith(PROJECT)]
    block("## the project's own functions, inclusive", ours)
    return "\n".join(lines)


def under(raw_file: Path, pattern: str, root_pid: int | None = None) -> tuple[int, int]:
    """(samples with a frame containing `pattern` on their stack, all samples)."""
    stacks = read(raw_file, root_pid)
    hit = sum(s.samples for s in stacks if any(pattern in frame for frame in s.frames))
    return hit, sum(s.samples for s in stacks)


def trim(raw_file: Path, root_pid: int | None = None, depth: int = 10, lines: int = 150) -> None:
    """Rewrite the file small enough to commit: each stack cut to its `depth` innermost
    frames (frames shortened, the process as "main" or "child <pid>"), the same stacks
    merged, the heaviest kept up to `lines` lines; the rest summed on one line. Still
    collapsed stacks, for flame-graph tools."""
    merged: Counter[str] = Counter()
    for stack in read(raw_file, root_pid):
        frames = stack.frames[-depth:]
        if len(stack.frames) > depth:
            frames = ["…", *frames]
        group = "child" if stack.process.startswith("child") else "main"
        merged[";".join([group, *frames])] += stack.samples
    kept = merged.most_common(lines)
    rest = sum(merged.values()) - sum(count for _, count in kept)
    text = [f"{stack} {count}" for stack, count in kept]
    if rest:
        text.append(f"main;(other stacks, each under {kept[-1][1]} samples) {rest}")
    raw_file.write_text("\n".join(text) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw", type=Path, nargs="+")
    parser.add_argument("--cpu-ms", type=float, help="the kind's CPU per payment, from /proc")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--under",
        action="append",
        default=[],
        metavar="TEXT",
        help="instead of the summary: the share of samples with a frame containing TEXT",
    )
    args = parser.parse_args()
    for raw in args.raw:
        if not args.under:
            print(summarize(raw, args.cpu_ms, top=args.top))
        for pattern in args.under:
            hit, total = under(raw, pattern)
            cost = f", {hit / max(total, 1) * args.cpu_ms:.2f} ms/payment" if args.cpu_ms else ""
            print(f"{raw.name}: {100 * hit / max(total, 1):.1f}% under {pattern!r}{cost}")


if __name__ == "__main__":
    main()
