"""Throughput and latency of POST /api/v1/payments/{id}/confirm under gunicorn.

Every request confirms a different, freshly seeded pending payment. Served by the same
gunicorn (the project's gunicorn.conf.py) and process, in the same run, two references
from bench/reference_wsgi.py:

  (a) a bare JSON endpoint: parse the body, answer JSON;
  (b) one INSERT and commit plus one Celery publish: the floor of "write, then hand off".

No worker runs: the published messages pile up in the bench Redis db, flushed at the
start and the end. The load comes from wrk (a Lua script gives each request its own
id) or, where wrk is missing, from Python threads on keep-alive connections.

    python -m bench.confirm_api [--seconds 10] [--connections 16,64] [--loadgen auto]
                                [--tracing off|on]

With `--tracing on` the gunicorn traces every request (OpenTelemetry, OTLP/HTTP to a
local sink that discards the spans): bench.run_all runs both and sets them side by side.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import bench.common as common

LUA = Path(__file__).with_name("wrk_unique_ids.lua")
NIL_UUID = "00000000-0000-0000-0000-000000000000"
CONFIRM = "/api/v1/payments/%s/confirm"
TOKEN = [""]  # the paying student's bearer token, set once the payments are seeded
BARE = "/bench/ref/bare/%s"
INSERT_PUBLISH = "/bench/ref/insert-publish/%s"
CASES = [  # (label, path template); the references first, then the real endpoint
    ("reference (a): bare JSON endpoint", BARE),
    ("reference (b): INSERT+commit, 1 Celery publish", INSERT_PUBLISH),
    ("POST /payments/{id}/confirm", CONFIRM),
]


@dataclass
class LoadResult:
    requests: int
    seconds: float
    status_errors: int  # answered with a status >= 400
    socket_errors: int  # connect/read/write errors and timeouts
    p50: float  # seconds
    p99: float
    max: float
    exhausted: int  # requests sent after the pre-seeded ids ran out (answered 404)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(port: int, template: str, ids: list[str], connections: int, seconds: int) -> LoadResult:
    threads = min(2, connections)  # 2 cores: more wrk threads only steal from gunicorn
    with tempfile.NamedTemporaryFile("w", suffix=".ids", delete=False) as ids_file:
        ids_file.write("\n".join(ids) + "\n")
    command = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        f"http://{common.HOST}:{port}",
        "--",
        ids_file.name,
        template,
        str(threads),
        TOKEN[0],
    ]
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    finally:
        Path(ids_file.name).unlink()
    if finished.returncode != 0:
        raise RuntimeError(f"wrk failed: {finished.stdout}\n{finished.stderr}")
    output = finished.stdout
    line = next(x for x in output.splitlines() if x.startswith("WRKJSON "))
    data = json.loads(line.removeprefix("WRKJSON "))
    return LoadResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        status_errors=data["status_errors"],
        socket_errors=sum(
            data[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
        ),
        p50=data["p50_us"] / 1e6,
        p99=data["p99_us"] / 1e6,
        max=data["max_us"] / 1e6,
        exhausted=data["exhausted"],
    )


def run_python(
    port: int, template: str, ids: list[str], connections: int, seconds: float
) -> LoadResult:
    """The fallback: one thread per keep-alive connection, closed loop, bounded in time."""
    lock = threading.Lock()
    pending = iter(ids)
    latencies: list[float] = []
    counts = {"status_errors": 0, "socket_errors": 0, "exhausted": 0}
    stop_at = time.monotonic() + seconds

    def connection_loop() -> None:
        connection = http.client.HTTPConnection(common.HOST, port, timeout=10)
        while time.monotonic() < stop_at:
            with lock:
                token = next(pending, None)
                if token is None:  # as in the Lua script: confirm answers 404, refs as usual
                    counts["exhausted"] += 1
                    token = NIL_UUID
            started = time.perf_counter()
            try:
                status, _ = common.send(connection, "POST", template % token, {}, token=TOKEN[0])
            except OSError:
                with lock:
                    counts["socket_errors"] += 1
                connection.close()
                continue
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                counts["status_errors"] += status >= 400
        connection.close()

    started = time.perf_counter()
    workers = [threading.Thread(target=connection_loop) for _ in range(connections)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=seconds + 30)
    elapsed = time.perf_counter() - started
    return LoadResult(
        requests=len(latencies),
        seconds=elapsed,
        p50=common.percentile(latencies, 50),
        p99=common.percentile(latencies, 99),
        max=max(latencies, default=float("nan")),
        **counts,
    )


def rows_written(template: str) -> int:
    """What the database shows for a case: confirmed payments, or reference (b) rows."""
    if template == CONFIRM:
        return common.scalar("SELECT count(*) FROM payments WHERE status = 'confirming'")
    if template == INSERT_PUBLISH:
        return common.scalar("SELECT count(*) FROM bench_reference")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="per case")
    parser.add_argument("--warmup", type=int, default=3, help="per endpoint, not reported")
    parser.add_argument("--connections", default="16,64", help="comma-separated")
    parser.add_argument(
        "--ids-per-second",
        type=int,
        default=1500,
        help="pending payments seeded per second of each confirm case (more than it can do)",
    )
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    common.add_tracing_argument(parser)
    args = parser.parse_args()
    levels = [int(c) for c in args.connections.split(",")]
    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if shutil.which("wrk") else "python"
    run = run_wrk if loadgen == "wrk" else run_python

    common.fresh_database()
    common.flush_bench_redis()
    common.create_reference_table()
    course_id = common.seed_catalogue(trainers=50)
    per_case = int(args.ids_per_second * args.seconds)
    warmup = int(args.ids_per_second * args.warmup)
    started = time.perf_counter()
    # All of one student's: every confirm carries that student's JWT, as the app would.
    student_id, seeded = common.seed_one_students_payments(
        course_id, per_case * len(levels) + warmup
    )
    TOKEN[0] = common.student_token(student_id)
    payments = [str(payment_id) for payment_id in seeded]
    print(
        f"seeded {len(payments):,} pending payments in {time.perf_counter() - started:.1f} s; "
        f"load generator: {loadgen}"
    )
    print(common.machine_note())

    # (connections, template) → (load result, rows written, Redis commands run)
    results: dict[tuple[int, str], tuple[LoadResult, int, int]] = {}
    try:
        with (
            common.tracing(args.tracing) as sink,
            common.gunicorn("bench.reference_wsgi:app") as server,
        ):
            print(f"gunicorn pid {server.process.pid} on {server.base}")
            for _, template in CASES:  # warm every worker's pools and imports
                ids = payments[:warmup] if template == CONFIRM else fresh_tokens(warmup)
                run(server.port, template, ids, min(levels), args.warmup)
            offset = warmup
            for connections in levels:
                for _, template in CASES:
                    if template == CONFIRM:
                        ids = payments[offset : offset + per_case]
                        offset += per_case
                    else:
                        ids = fresh_tokens(per_case)
                    before, calls = rows_written(template), common.redis_calls()
                    result = run(server.port, template, ids, connections, args.seconds)
                    calls = common.redis_calls() - calls
                    written = rows_written(template) - before
                    results[connections, template] = (result, written, calls)
    finally:
        common.flush_bench_redis()

    print()
    print(
        f"{args.seconds:g} s per case, each confirm on a fresh pending payment; "
        "gunicorn.conf.py (gthread), same process for all rows"
    )
    print(common.tracing_note(args.tracing, sink))
    print()
    rows = []
    for connections in levels:
        for label, template in CASES:
            r, written, calls = results[connections, template]
            rows.append(
                [
                    label,
                    connections,
                    f"{r.requests:,}",
                    f"{r.rate:,.0f}",
                    common.ms(r.p50),
                    common.ms(r.p99),
                    common.ms(r.max),
                    r.status_errors,
                    r.socket_errors,
                    f"{written:,}" if template != BARE else "-",
                    f"{calls / max(1, r.requests):.1f}",
                ]
            )
    print(
        common.table(
            [
                "case",
                "conns",
                "requests",
                "req/s",
                "p50 ms",
                "p99 ms",
                "max ms",
                "non-2xx",
                "socket errors",
                "rows in DB",
                "Redis cmds/req",
            ],
            rows,
        )
    )
    print(
        "\nrows in DB: confirmed payments or reference rows written during the case (requests "
        "in flight when the load stops count too); Redis cmds/req: server-wide INFO "
        "commandstats delta per request"
    )
    if any(results[c, CONFIRM][0].exhausted for c in levels):
        print("\nWARNING: pre-seeded ids ran out (404s above): raise --ids-per-second")

    print()
    rows = []
    for connections in levels:
        confirm = results[connections, CONFIRM][0]
        bare = results[connections, BARE][0]
        insert = results[connections, INSERT_PUBLISH][0]
        vs_b = confirm.rate / insert.rate if insert.rate else float("nan")
        vs_a = confirm.rate / bare.rate if bare.rate else float("nan")
        p99_target = "≤ 50 ms" if connections == 16 else "-"
        p99_met = ("met" if confirm.p99 <= 0.050 else "NOT met") if connections == 16 else "-"
        rows.append(
            [
                connections,
                f"{vs_b:.2f}x",
                "≥ 0.80x",
                "met" if vs_b >= 0.8 else "NOT met",
                f"{vs_a:.2f}x",
                common.ms(confirm.p99),
                p99_target,
                p99_met,
            ]
        )
    print(
        common.table(
            [
                "conns",
                "confirm / ref (b) req/s",
                "target",
                "",
                "confirm / ref (a) req/s",
                "confirm p99 ms",
                "target",
                "",
            ],
            rows,
        )
    )
    figures: dict[str, float] = {}
    for connections in levels:
        confirm = results[connections, CONFIRM][0]
        figures[f"confirm req/s, {connections} conns"] = confirm.rate
        figures[f"confirm p99 ms, {connections} conns"] = confirm.p99 * 1000
    common.print_summary("confirm_api", args.tracing, figures)


def fresh_tokens(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


if __name__ == "__main__":
    main()
