"""Every bench script in sequence, as subprocesses, gathered into one Markdown report.

    python -m bench.run_all [--quick] [--only confirm_api,pipeline] [--output report.md]

`make bench` runs it. Each script rebuilds the bench database and Redis db itself, so
they run one after the other (never in parallel: they would share CPUs and stores).
Progress goes to stderr; the report to stdout (and --output).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# script: (modest arguments, --quick arguments). Scripts not listed here but present in
# bench/ (a new bench/home_cache.py, say) run after these with no arguments, or with
# --quick under --quick when their --help offers it.
QUICK_CONFIRM = ["--seconds", "3", "--warmup", "1", "--ids-per-second", "800"]
SCRIPTS: dict[str, tuple[list[str], list[str]]] = {
    "confirm_api": (["--seconds", "10"], QUICK_CONFIRM),
    "pipeline": (["--payments", "2000"], ["--payments", "200"]),
    "e2e_latency": (["--rate", "20", "--seconds", "30"], ["--rate", "10", "--seconds", "5"]),
    "top_up": (["--allocations", "100000"], ["--allocations", "5000"]),
    "home_cache": ([], []),
    # The realistic flow (the whole Procfile stack, webhook, e-mails): steps of 20 s from
    # 8/s up to the first rate past the knee, then 1.5 x the knee, with the CPU budget per
    # process kind beside the bare chain's; about 4-5 minutes each provider latency.
    "knee": (
        ["--seconds", "20"],
        ["--rates", "10", "--seconds", "5", "--reference", "cpu", "--reference-seconds", "5"],
    ),
    "availability": (
        ["--requests", "20"],
        ["--trainers", "200", "--allocations", "20000", "--requests", "5"],
    ),
    # Issue 25's cost as the data grows: two databases seeded (one with a million
    # sessions), every path side by side on both, their plans; about 4 minutes. Three
    # rounds, the best of each figure: with one, an HTTP p50 of a few ms moved by half
    # between runs (the cached home read, 1.45x one run and 0.67x the next, although it
    # never reads PostgreSQL).
    "volume": (
        ["--rounds", "3"],
        ["--allocations", "20000", "--calls", "20", "--seconds", "3", "--top-up-runs", "1"],
    ),
}
NOT_SCRIPTS = {
    "__init__",
    "common",
    "noop_tasks",
    "profiling",
    "pyspy",
    "reference_wsgi",
    "run_all",
    "stack",
}
# Run again with these arguments added, each a section of its own: the knee with the
# provider's real latency too (the bare chain, which never calls it, only at the CPU
# table's rate).
# The eager run, the API's two requests and a task message's publish counted in
# instructions under callgrind as well (under a minute each), the figure that does not
# move with the machine's speed of the day.
VARIANTS: dict[str, list[list[str]]] = {
    "knee": [["--provider-ms", "150", "--reference", "cpu"]],
    "eager_profile": [["--instructions"]],
    "api_profile": [["--instructions"]],
    "publish_profile": [["--instructions", "--payments", "30"]],
}
# Run a second time with `--tracing on` (OpenTelemetry exporting to a local sink): the
# report ends with their figures with tracing off and on side by side.
TRACED = ("confirm_api", "pipeline")
SUMMARY = "BENCHJSON "  # bench.common.SUMMARY: not imported (it points at the bench stores)
TIMEOUT = {False: 1800, True: 600}  # seconds per script: every run stops by itself


def discover() -> list[str]:
    """Known scripts in their order, then any other bench module with a main guard."""
    present = {
        p.stem
        for p in BENCH.glob("*.py")
        if p.stem not in NOT_SCRIPTS and '__name__ == "__main__"' in p.read_text()
    }
    return [s for s in SCRIPTS if s in present] + sorted(present - SCRIPTS.keys())


def arguments(script: str, quick: bool) -> list[str]:
    if script in SCRIPTS and SCRIPTS[script] != ([], []):
        return SCRIPTS[script][quick]
    if not quick:
        return []
    helptext = subprocess.run(
        [sys.executable, "-m", f"bench.{script}", "--help"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return ["--quick"] if "--quick" in helptext else []


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def git_revision() -> str:
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{revision}{' (with uncommitted changes)' if dirty else ''}"


def run(
    script: str, args: list[str], timeout: float, title: str | None = None
) -> tuple[str, list[dict]]:
    """The script's section of the report, and the summaries it printed (SUMMARY lines,
    left out of the section)."""
    command = [sys.executable, "-m", f"bench.{script}", *args]
    shown = " ".join(["python", "-m", f"bench.{script}", *args])
    print(f"running {shown} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGINT, not SIGKILL: the script's finally blocks then stop its gunicorn and
        # worker (they run in process groups of their own and would outlive a SIGKILL).
        process.send_signal(signal.SIGINT)
        try:
            stdout, stderr = process.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        stderr += f"\nTIMEOUT after {timeout:.0f} s"
    code = process.returncode
    elapsed = time.perf_counter() - started
    print(f"  ... {elapsed:.0f} s, exit {code}", file=sys.stderr, flush=True)
    lines = stdout.strip().splitlines()
    summaries = [json.loads(x.removeprefix(SUMMARY)) for x in lines if x.startswith(SUMMARY)]
    shown_out = "\n".join(x for x in lines if not x.startswith(SUMMARY))
    title = title or (f"{script}, tracing on" if "--tracing" in args else script)
    parts = [f"## {title}", "", f"`{shown}` — {elapsed:.0f} s, exit {code}", "", shown_out]
    if code != 0:
        parts += ["", "```", *stderr.strip().splitlines()[-30:], "```"]
    return "\n".join(parts) + "\n", summaries


def tracing_section(summaries: list[dict]) -> str:
    """The TRACED scripts' figures with tracing off and on, and on / off."""
    figures: dict[str, dict[str, float]] = {}
    for summary in summaries:
        if summary["script"] not in TRACED:
            continue  # figures of a script run once (bench.availability)
        for name, value in summary["figures"].items():
            figures.setdefault(name, {})[summary["tracing"]] = value
    rows = []
    for name, by_mode in figures.items():
        off, on = by_mode.get("off"), by_mode.get("on")
        ratio = f"{on / off:.2f}x" if off and on else "-"
        rows.append(
            f"| {name} | {'-' if off is None else f'{off:,.1f}'} "
            f"| {'-' if on is None else f'{on:,.1f}'} | {ratio} |"
        )
    return (
        "\n".join(
            [
                "## tracing off / on",
                "",
                "The same scripts, run twice in this report: TRACING unset, then TRACING=on with "
                "every span exported by OTLP/HTTP to a local sink (docs/operations.md, Tracing).",
                "",
                "| figure | tracing off | tracing on | on / off |",
                "|---|---|---|---|",
                *rows,
            ]
        )
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small figures, a few minutes")
    parser.add_argument("--only", default="", help="comma-separated script names")
    parser.add_argument("--output", type=Path, help="also write the report here")
    args = parser.parse_args()
    scripts = discover()
    if args.only:
        wanted = args.only.split(",")
        scripts = [s for s in scripts if s in wanted]

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    header = [
        "# Tutorflow benchmarks",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {git_revision()}, "
        f"{os.cpu_count()} CPUs, load average at start {load}"
        f"{', --quick' if args.quick else ''}. Each table sets the figures beside a "
        "reference measured in the same run.",
        "",
    ]
    sections: list[str] = []
    summaries: list[dict] = []
    for script in scripts:
        base = arguments(script, args.quick)
        variants: list[tuple[list[str], str | None]] = [(base, None)]
        if script in TRACED:
            variants.append(([*base, "--tracing", "on"], None))
        for extra in VARIANTS.get(script, []):
            variants.append(([*base, *extra], f"{script}, {' '.join(extra)}"))
        for variant, title in variants:
            section, printed = run(script, variant, TIMEOUT[args.quick], title)
            sections.append(section)
            summaries += printed
    if summaries:
        sections.append(tracing_section(summaries))
    report = "\n".join(header) + "\n" + "\n".join(sections)
    print(report)
    if args.output:
        args.output.write_text(report)


if __name__ == "__main__":
    main()
