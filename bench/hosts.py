"""One worker host against two: throughput, and what the second host costs the broker
and PostgreSQL.

Hosts are network namespaces on one bridge (harness.hosts): an API host, worker
hosts, and the data host (a private PostgreSQL and Redis on the bridge address). The
same burst of N payments (confirmed over HTTP, 8 at a time) runs twice:

- one worker host with a worker of concurrency 2, and
- two worker hosts with a worker of concurrency 1 each,

so both layouts have the same number of pool processes on the same 2 shared cores: a
second host adds no CPU here, and what changes is the broker and database traffic of a
second worker (its own connections, heartbeats, mingle and gossip, its own polling of
every queue). Per layout: payments/s from the first confirm to the last payment
fulfilled, Redis commands and PostgreSQL transactions per payment, and the Redis
commands per second the idle workers cost (10 s with nothing to do). Needs root.

    python -m bench.hosts [--payments 300]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import redis
from sqlalchemy import create_engine, text

import bench.common as common
from harness.burst import (
    Confirming,
    assert_exactly_once,
    burst_env,
    prepare,
    report,
)
from harness.hosts import DATA_HOST, hosts
from harness.processes import api_server, celery_worker, private_postgres, private_redis, wait_until
from harness.serving import SandboxServer

LAYOUTS = {"one worker host (-c 2)": [2], "two worker hosts (-c 1 each)": [1, 1]}
IDLE_SECONDS = 10.0


def counters(redis_url: str, database_url: str) -> dict[str, float]:
    client = redis.Redis.from_url(redis_url)
    stats = client.info("stats")
    clients = client.info("clients")["connected_clients"]
    client.close()
    engine = create_engine(database_url)
    with engine.connect() as connection:
        transactions = connection.scalar(
            text(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                "WHERE datname = current_database()"
            )
        )
        backends = connection.scalar(
            text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        )
    engine.dispose()
    return {
        "commands": stats["total_commands_processed"],
        "transactions": transactions,
        "redis clients": clients,
        "pg backends": backends,
        "at": time.monotonic(),
    }


@contextmanager
def layout(concurrencies: list[int], payments: int) -> Iterator[dict[str, Any]]:
    names = ["api", *(f"w{i + 1}" for i in range(len(concurrencies)))]
    with (
        hosts(*names) as net,
        private_postgres(DATA_HOST) as postgres,
        private_redis(address=DATA_HOST) as broker,
        ExitStack() as stack,
    ):
        provider = SandboxServer(address=DATA_HOST).base
        ids = prepare(payments, postgres.url, provider)
        env = burst_env(
            postgres.url,
            broker.url,
            STRIPE_API_BASE=provider,
            LOG_LEVEL="WARNING",
            # Throughput, not recovery: the production visibility timeout.
            CELERY_VISIBILITY_TIMEOUT="300",
        )
        api = stack.enter_context(api_server(env, host=net["api"], workers=2))
        for i, concurrency in enumerate(concurrencies):
            stack.enter_context(
                celery_worker(env=env, host=net[f"w{i + 1}"], concurrency=concurrency, beat=i == 0)
            )
        yield {"api": api, "ids": ids, "postgres": postgres.url, "redis": broker.url}


def run(concurrencies: list[int], payments: int) -> list[object]:
    with layout(concurrencies, payments) as stack:
        idle_before = counters(stack["redis"], stack["postgres"])
        time.sleep(IDLE_SECONDS)  # the idle cost is what is measured: a fixed window
        before = counters(stack["redis"], stack["postgres"])
        idle_rate = (before["commands"] - idle_before["commands"]) / (
            before["at"] - idle_before["at"]
        )
        sender = Confirming(stack["api"].base, stack["ids"], common.settings.admin_token)
        wait_until(
            lambda: report(stack["postgres"])[0]["fulfilled"] == payments,
            600,
            "the burst did not finish",
        )
        after = counters(stack["redis"], stack["postgres"])
        sender.join(60)
        assert_exactly_once(stack["postgres"], payments)
    elapsed = after["at"] - before["at"]
    return [
        f"{payments / elapsed:.1f}",
        f"{(after['commands'] - before['commands']) / payments:.0f}",
        f"{(after['transactions'] - before['transactions']) / payments:.1f}",
        f"{idle_rate:.1f}",
        int(after["redis clients"]),
        int(after["pg backends"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payments", type=int, default=300)
    args = parser.parse_args()
    print(common.machine_note())
    rows = [[name, *run(layout_, args.payments)] for name, layout_ in LAYOUTS.items()]
    print(
        f"\n{args.payments} payments per layout, confirmed over HTTP 8 at a time; every one "
        "fulfilled exactly once (counted by rows)\n"
    )
    print(
        common.table(
            [
                "layout",
                "payments/s",
                "Redis commands / payment",
                "PostgreSQL transactions / payment",
                "idle Redis commands/s",
                "Redis clients",
                "PostgreSQL backends",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
