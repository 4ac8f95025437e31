"""Soak: N payments through the real stack while workers are SIGKILLed at random
intervals and Redis (AOF) is restarted once. Prints what happened and exits non-zero
on any duplicate or lost payment.

    python -m scripts.soak [--payments 2000] [--seed 7]

Everything runs on this machine against a database of its own (tutorflow_soak) and a
private redis-server; the shared services are never stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

os.environ["DATABASE_URL"] = os.environ.get(
    "SOAK_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/tutorflow_soak"
)

import requests

from core.config import get_settings
from harness.burst import prepare, report
from harness.processes import (
    api_server,
    celery_worker,
    private_redis,
    time_limit_env,
    wait_until,
)
from harness.serving import SandboxServer

settings = get_settings()
ADMIN = {"Authorization": f"Bearer {settings.admin_token}"}


def run(payments: int, seed: int, timeout: float) -> int:
    rng = random.Random(seed)
    os.environ["STRIPE_API_BASE"] = SandboxServer().base  # in a thread, for the whole run
    get_settings.cache_clear()  # read again: the provider's address is known now
    payment_ids = prepare(payments, settings.database_url)
    kills: Counter = Counter()
    with private_redis(aof=True) as broker:
        env = {
            "DATABASE_URL": settings.database_url,
            "BROKER_URL": broker.url,
            "STRIPE_API_BASE": os.environ["STRIPE_API_BASE"],
            "CACHE_URL": broker.url,
            # Recovery in seconds: the visibility timeout above the task time limit
            # plus the longest retry countdown, PostgreSQL's timeouts under the soft
            # limit (celeryconfig.check_delivery_settings).
            "CELERY_VISIBILITY_TIMEOUT": "10",
            **time_limit_env(4),
            "CELERY_RETRY_BACKOFF_MAX": "4",
            "PROVIDER_RETRY_BACKOFF_MAX": "4",
            "PIPELINE_STALL_SECONDS": "20",
            "OUTBOX_RELAY_INTERVAL_SECONDS": "1",
            "OUTBOX_RELAY_GRACE_SECONDS": "2",
            "RATE_LIMIT_PUBLIC": "1000000/minute",
        }
        os.environ.update(env)
        with api_server(env) as api:
            # Supervised: a worker that exits on its own is restarted, as in production.
            worker_box = [celery_worker(env=env, beat=True, supervise=True)]
            worker = worker_box[0].__enter__()
            done = threading.Event()
            http = requests.Session()

            def confirm(payment_id: str) -> int:
                for _ in range(20):  # a client retries a 5xx or a refused connection
                    try:
                        response = http.post(
                            f"{api.base}/api/v1/payments/{payment_id}/confirm",
                            json={},
                            headers=ADMIN,
                            timeout=10,
                        )
                        if response.status_code < 500:
                            return response.status_code
                    except requests.RequestException:
                        pass
                    time.sleep(0.5)
                return 0

            def chaos() -> None:
                nonlocal worker
                restarted_redis = False
                while not done.wait(rng.uniform(2, 6)):
                    if not restarted_redis and rng.random() < 0.3:
                        broker.restart()
                        kills["redis restart"] += 1
                        restarted_redis = True
                    elif rng.random() < 0.7:
                        children = [
                            int(p)
                            for p in os.popen(f"pgrep -P {worker.process.pid}").read().split()
                        ]
                        if children:
                            os.kill(rng.choice(children), signal.SIGKILL)
                            kills["pool child SIGKILL"] += 1
                    else:
                        worker.kill()
                        kills["whole worker SIGKILL"] += 1
                        worker_box[0].__exit__(None, None, None)
                        worker_box[0] = celery_worker(env=env, beat=True, supervise=True)
                        worker = worker_box[0].__enter__()
                if not restarted_redis:
                    broker.restart()
                    kills["redis restart"] += 1

            chaos_thread = threading.Thread(target=chaos, daemon=True)
            started = time.monotonic()
            chaos_thread.start()
            with ThreadPoolExecutor(8) as pool:
                statuses = Counter(pool.map(confirm, payment_ids))
            confirmed_in = time.monotonic() - started

            def settled() -> bool:
                figures, reasons = report(settings.database_url)
                return figures["fulfilled"] + sum(reasons.values()) >= payments

            with contextlib.suppress(AssertionError):  # the report says what did not settle
                wait_until(settled, timeout, "soak did not settle")
            done.set()
            chaos_thread.join(60)
            elapsed = time.monotonic() - started
            worker_box[0].__exit__(None, None, None)
    figures, reasons = report(settings.database_url)
    print(f"confirm answers: {dict(statuses)} in {confirmed_in:.1f} s; chaos: {dict(kills)}")
    print(f"payments        {figures['payments']}")
    print(f"fulfilled       {figures['fulfilled']}")
    print(f"dead-lettered   {sum(reasons.values())}")
    for reason, count in reasons.most_common():
        print(f"  {count:>5}  {reason}")
    print(f"duplicate rows  {figures['duplicate rows']}")
    print(f"lost            {figures['lost']}")
    print(f"settled in      {elapsed:.1f} s")
    return 1 if figures["duplicate rows"] or figures["lost"] else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payments", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    sys.exit(run(args.payments, args.seed, args.timeout))


if __name__ == "__main__":
    main()
