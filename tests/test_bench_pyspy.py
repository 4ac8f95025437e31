"""bench.pyspy turns py-spy's collapsed stacks into the tables BENCHMARKS.md quotes: the
shares are the samples' and the milliseconds that share of the CPU measured beside it."""

from __future__ import annotations

from pathlib import Path

from bench import pyspy

SITE = "/work/main/.venv/lib/python3.11/site-packages"
RAW = "\n".join(
    [
        # The main process (pid 10): its event loop publishing task events.
        f'process 10:"celery worker";thread (0x1);<module> (celery:8);asynloop '
        f"(celery/worker/loops.py:90);publish ({SITE}/kombu/messaging.py:170) 30",
        # A pool child (pid 11): a step in the project's code, SQLAlchemy under it.
        f'process 11:"celery worker";thread (0x2);<module> (celery:8);run_step '
        f"(/work/wt-x/tasks/base.py:120);execute ({SITE}/sqlalchemy/engine/base.py:1418) 50",
        'process 11:"celery worker";thread (0x2);<module> (celery:8);run_step '
        "(/work/wt-x/tasks/base.py:121);dumps (/usr/lib/python3.11/json/__init__.py:231) 20",
    ]
)


def write(tmp_path: Path) -> Path:
    raw = tmp_path / "worker.raw"
    raw.write_text(RAW + "\n")
    return raw


def test_frames_are_shortened_and_processes_named(tmp_path: Path) -> None:
    stacks = pyspy.read(write(tmp_path), root_pid=10)
    assert [s.process for s in stacks] == ["main", "child 11", "child 11"]
    assert stacks[1].frames == [
        "<module> (celery)",
        "run_step (tasks/base.py)",
        "execute (sqlalchemy/engine/base.py)",
    ]
    assert sum(s.samples for s in stacks) == 100


def test_summary_shares_and_milliseconds(tmp_path: Path) -> None:
    summary = pyspy.summarize(write(tmp_path), cpu_ms=40.0, root_pid=10, title="worker")
    assert "100 samples" in summary
    assert "main process 30%, pool children 70%" in summary
    # Self by package: half of the samples in SQLAlchemy, half of 40 ms.
    assert "| 50.0 | 20.00 | sqlalchemy |" in summary
    # The project's own function, inclusive: 70 of 100 samples.
    assert "| 70.0 | 28.00 | `run_step (tasks/base.py)` |" in summary
    # `<module> (celery)` is under every sample of both processes: the trunk, left out of
    # the inclusive table (it still heads no other table).
    inclusive = summary.split("## inclusive")[1].split("##")[0]
    assert "<module>" not in inclusive


def test_trim_keeps_the_heaviest_stacks_readable_again(tmp_path: Path) -> None:
    raw = write(tmp_path)
    pyspy.trim(raw, root_pid=10, depth=2, lines=2)
    lines = raw.read_text().splitlines()
    assert lines[0] == "child;…;run_step (tasks/base.py);execute (sqlalchemy/engine/base.py) 50"
    assert lines[-1].endswith(" 20") and "other stacks" in lines[-1]
    again = pyspy.read(raw)
    assert sum(s.samples for s in again) == 100
    assert again[0].process == "child"
