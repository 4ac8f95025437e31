"""A Redis Sentinel failover mid-burst: the API (gunicorn), two workers, beat and Flower
all on `sentinel://` URLs (harness.processes.sentinel_redis: a primary, a replica,
three sentinels). During a burst of payments the replica falls behind (asynchronous
replication allows it; the test makes it certain), the primary goes on acknowledging
publishes, acks and inbox-side writes that exist nowhere else, and is then SIGKILLed.

Then: the sentinels promote the replica; every process follows it by itself (no
restart: the supervisor would count one); the messages the failover lost come back
from PostgreSQL (the outbox relay and the stalled-pipeline sweep publish them again,
and the visibility timeout redelivers what the new primary still held as unacked);
counted by rows, every payment is fulfilled once, none lost, none doubled. The failover
and recovery times are printed.

A second test cuts the primary off instead (its own network namespace, link down: no
RST, no FIN, celery#6348's case): the same processes notice the dead connections by
themselves and follow the promoted replica.

Both run in the multi-host suite (`make test-hosts`, which `.ci/run` runs); the first
needs only redis-server, the second root and iproute2 as well.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest
import requests
from sqlalchemy import create_engine, func, select

from domain.events import EventType
from harness.burst import Confirming, assert_exactly_once, burst_env, prepare, report
from harness.hosts import hosts
from harness.processes import (
    FLOWER_AUTH,
    SENTINEL_MASTER,
    api_server,
    celery_worker,
    flower,
    sentinel_redis,
    wait_until,
)
from models import DomainEvent
from tests.conftest import settings

pytestmark = [
    pytest.mark.hosts,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

BURST = 120
ADMIN_TOKEN = "test-admin-token"


def fulfilled() -> int:
    return report(settings.database_url)[0]["fulfilled"]


def resumed_pipelines() -> int:
    """How many chains the stalled-pipeline sweep published again from PostgreSQL."""
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            return connection.scalar(
                select(func.count())
                .select_from(DomainEvent)
                .where(DomainEvent.event_type == EventType.PIPELINE_RESUMED)
            )
    finally:
        engine.dispose()


def flower_lists_the_pipeline_queue(base: str) -> bool:
    """Flower asked the workers (a broadcast through the broker) and the broker itself."""
    try:
        answer = requests.get(f"{base}/api/queues/length", auth=FLOWER_AUTH, timeout=10)
        return answer.ok and "pipeline" in {q["name"] for q in answer.json()["active_queues"]}
    except requests.RequestException:
        return False


def test_a_sentinel_failover_mid_burst_loses_nothing_and_doubles_nothing():
    payment_ids = prepare(BURST, settings.database_url)
    with sentinel_redis() as group:
        env = burst_env(settings.database_url, group.url, REDIS_SENTINEL_MASTER=SENTINEL_MASTER)
        with (
            api_server(env, workers=2) as api,
            celery_worker(env=env, beat=True, supervise=True) as w1,
            celery_worker(env=env, supervise=True) as w2,
            flower(env) as flower_base,
        ):
            wait_until(lambda: flower_lists_the_pipeline_queue(flower_base), 60, "no Flower")
            sender = Confirming(api.base, payment_ids, ADMIN_TOKEN)
            wait_until(lambda: fulfilled() >= BURST // 4, 120, "the burst never got going")

            # The replica stops following; what the pipeline does next (at least ten
            # more payments fulfilled) is acknowledged by the primary alone.
            group.stall_replication()
            behind_from = fulfilled()
            wait_until(lambda: fulfilled() >= behind_from + 10, 60, "the burst stalled")
            primary_offset = group.primary.client().info("replication")["master_repl_offset"]
            replica_offset = group.replica.client().info("replication")["slave_repl_offset"]
            assert primary_offset > replica_offset  # acknowledged writes only it holds

            group.kill_primary()
            killed_at = time.monotonic()
            group.resume_replication()  # nothing to resume from: the primary is gone
            wait_until(lambda: group.master_port() == group.replica.port, 60, "no failover")
            failover = time.monotonic() - killed_at

            sender.join(120)
            assert sender.answers.count(202) == BURST
            wait_until(lambda: fulfilled() == BURST, 180, "the burst did not finish")
            recovery = time.monotonic() - killed_at
            # Flower follows too: its event consumer and its broker view.
            wait_until(lambda: flower_lists_the_pipeline_queue(flower_base), 60, "Flower lost")

            assert_exactly_once(settings.database_url, BURST)
            # What the failover lost is timing: chain messages (then the sweep publishes
            # them again from PostgreSQL, counted here) or only acks and unacked
            # bookkeeping (then the visibility timeout redelivers and the inbox answers).
            # Either way the rows above are the claim; the count is reported, not
            # required (one clean-clone run lost no chain message: 0 resumed).
            resumed = resumed_pipelines()
            # Every process followed the new primary by itself: none exited.
            assert (w1.restarts, w2.restarts) == (0, 0), w1.log()[-3000:] + w2.log()[-3000:]
            assert api.process.poll() is None
    print(
        f"\nsentinel failover: {primary_offset - replica_offset} bytes of acknowledged "
        f"writes lost; new primary named {failover:.1f} s after the kill; all {BURST} "
        f"fulfilled {recovery:.1f} s after it; {resumed} chains resumed from PostgreSQL"
    )


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 for network namespaces",
)
def test_a_primary_cut_off_without_a_word_is_left_for_the_promoted_replica():
    """celery#6348: a primary that vanishes without closing its connections (its host's
    link down: no RST, no FIN) leaves clients waiting on dead sockets. The primary runs
    in a host of its own (harness.hosts) and is cut off between two halves of a burst;
    the sentinels promote the replica, and the worker, beat and the API notice the dead
    connections by themselves (kombu's socket timeout and BRPOP health check,
    celeryconfig.py) and carry on with the new primary, without a restart."""
    payment_ids = prepare(40, settings.database_url)
    before, after = payment_ids[:20], payment_ids[20:]
    with hosts("redis-a") as net, sentinel_redis(primary_host=net["redis-a"]) as group:
        env = burst_env(settings.database_url, group.url, REDIS_SENTINEL_MASTER=SENTINEL_MASTER)
        with (
            api_server(env, workers=1) as api,
            celery_worker(env=env, beat=True, supervise=True) as worker,
        ):
            Confirming(api.base, before, ADMIN_TOKEN).join(60)
            wait_until(lambda: fulfilled() == 20, 120, "the first half did not finish")

            net["redis-a"].cut()
            cut_at = time.monotonic()
            wait_until(lambda: group.master_port() == group.replica.port, 60, "no failover")
            failover = time.monotonic() - cut_at
            sender = Confirming(api.base, after, ADMIN_TOKEN)
            sender.join(120)
            assert sender.answers.count(202) == 20
            wait_until(lambda: fulfilled() == 40, 120, "the second half did not finish")
            recovery = time.monotonic() - cut_at

            assert_exactly_once(settings.database_url, 40)
            assert worker.restarts == 0, worker.log()[-3000:]
            assert api.process.poll() is None
    print(
        f"\nsentinel, primary cut off: new primary {failover:.1f} s after the cut; the "
        f"second 20 payments all fulfilled {recovery:.1f} s after it"
    )
