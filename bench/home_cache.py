"""GET /api/v1/students/{id}/home: served from the Redis cache vs. built from PostgreSQL.

Side by side in one run, same gunicorn: the real endpoint (a cache hit after the first
request) and the same read model built from the database on every request
(bench/reference_wsgi.py). The student has one active course and 7 upcoming sessions.

    python -m bench.home_cache [--seconds 10] [--connections 16]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess

import bench.common as common
from bootstrap import bootstrap
from domain import fulfilment
from domain.clock import utcnow

celery_app = bootstrap().celery  # the bench settings (bench.common)

CASES = [
    ("uncached: read model from PostgreSQL", "/bench/ref/home-uncached/{id}"),
    ("cached: GET /students/{id}/home", "/api/v1/students/{id}/home"),
]


def seed_student() -> int:
    course = common.seed_catalogue(1)
    [(payment_id, student_id)] = common.seed_pending_payments(course, 1)
    common.execute("UPDATE payments SET status = 'succeeded' WHERE id = :id", id=payment_id)
    with celery_app.database.transaction() as session:
        purchase = fulfilment.create_purchase(session, payment_id)
        allocation = fulfilment.allocate_trainer(session, purchase.id)
        fulfilment.schedule_sessions(session, allocation.id, now=utcnow(), window=7)
    return student_id


def wrk(url: str, seconds: int, connections: int, token: str) -> tuple[float, float, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-H",
            f"Authorization: Bearer {token}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def latency(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return rate, latency("50%"), latency("99%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("home_cache needs wrk (apt-get install wrk)")
    common.fresh_database()
    common.flush_bench_redis()
    student_id = seed_student()
    rows = []
    with common.gunicorn() as server:
        for label, path in CASES:
            url = server.base + path.format(id=student_id)
            token = common.student_token(student_id)  # the student reads their own home
            wrk(url, 2, args.connections, token)  # warm-up (and the first cache fill)
            rate, p50, p99 = wrk(url, args.seconds, args.connections, token)
            rows.append([label, args.connections, f"{rate:,.0f}", f"{p50:.1f}", f"{p99:.1f}"])
    print(common.machine_note())
    print()
    print(common.table(["case", "conns", "req/s", "p50 ms", "p99 ms"], rows))
    ratio = float(rows[1][2].replace(",", "")) / float(rows[0][2].replace(",", ""))
    print(f"\ncached / uncached throughput: {ratio:.2f}x")


if __name__ == "__main__":
    main()
