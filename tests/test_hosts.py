"""Several hosts on one machine (harness.hosts: network namespaces on a bridge): an API
host, two worker hosts (beat on the first) and the data host (PostgreSQL, Redis and the
provider sandbox on the bridge address). Each test bursts 300 payments over HTTP and
then counts rows: every payment fulfilled, none lost, no row doubled.

- A whole worker host lost mid-burst (SIGKILL to every process in it): the other host
  finishes everything, after the broker's visibility timeout; the recovery time is
  printed.
- A worker host cut off for 30 s mid-burst, then healed: its worker resumes consuming by
  itself, with no restart.

`make test-hosts` runs them (root and iproute2 needed); `.ci/run` does too.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from harness.burst import (
    Confirming,
    assert_exactly_once,
    burst_env,
    prepare,
    report,
)
from harness.hosts import DATA_HOST, Host, hosts
from harness.processes import (
    ApiProcess,
    WorkerProcess,
    api_server,
    celery_worker,
    private_postgres,
    private_redis,
    wait_until,
)
from harness.serving import SandboxServer

pytestmark = [
    pytest.mark.hosts,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None,
        reason="needs root and iproute2 for network namespaces",
    ),
]

BURST = 300
ADMIN_TOKEN = "test-admin-token"


@dataclass
class Cluster:
    hosts: dict[str, Host]
    api: ApiProcess
    workers: dict[str, WorkerProcess]
    database_url: str
    payment_ids: list[str]

    def fulfilled(self) -> int:
        return report(self.database_url)[0]["fulfilled"]

    def wait_for_all(self, timeout: float, message: str) -> None:
        """Every payment fulfilled within `timeout`; if not, the failure says what the rows
        say (how many, the dead letters) and what each worker logged last."""
        try:
            wait_until(lambda: self.fulfilled() == BURST, timeout, message)
        except AssertionError:
            figures, dead_letters = report(self.database_url)
            logs = {name: worker.log()[-2000:] for name, worker in self.workers.items()}
            raise AssertionError(
                f"{message}: {figures}; dead letters {dict(dead_letters)}; last logs {logs}"
            ) from None


@contextmanager
def cluster(**overrides: str) -> Iterator[Cluster]:
    with (
        hosts("api", "w1", "w2") as net,
        private_postgres(DATA_HOST) as postgres,
        private_redis(address=DATA_HOST) as broker,
    ):
        provider = SandboxServer(address=DATA_HOST).base
        payment_ids = prepare(BURST, postgres.url, provider)
        env = burst_env(postgres.url, broker.url, STRIPE_API_BASE=provider, **overrides)
        with (
            api_server(env, host=net["api"], workers=2) as api,
            celery_worker(env=env, host=net["w1"], beat=True, supervise=True) as w1,
            celery_worker(env=env, host=net["w2"], supervise=True) as w2,
        ):
            yield Cluster(net, api, {"w1": w1, "w2": w2}, postgres.url, payment_ids)


def burst(cluster: Cluster) -> Confirming:
    return Confirming(cluster.api.base, cluster.payment_ids, ADMIN_TOKEN)


def test_a_worker_host_lost_mid_burst_the_other_finishes_everything_once():
    with cluster() as c:
        sender = burst(c)
        wait_until(lambda: c.fulfilled() >= BURST // 4, 120, "the burst never got going")
        c.workers["w2"].stopping = True  # its supervisor must not bring it back
        killed = c.hosts["w2"].kill_all()
        lost_at = time.monotonic()
        assert killed >= 3  # the worker, its two pool processes
        sender.join(120)
        assert sender.answers.count(202) == BURST
        c.wait_for_all(240, "the other host did not finish")
        recovery = time.monotonic() - lost_at
        assert_exactly_once(c.database_url, BURST)
    print(f"\nhost lost: last payment fulfilled {recovery:.1f} s after the kill")


def test_a_worker_host_cut_off_for_30_s_resumes_by_itself():
    with cluster() as c:
        sender = burst(c)
        wait_until(lambda: c.fulfilled() >= BURST // 4, 120, "the burst never got going")
        cut_at = time.monotonic()
        c.hosts["w2"].cut()
        time.sleep(30)  # the partition's length is the point here, not a wait for an event
        c.hosts["w2"].heal()
        healed_at = time.monotonic()
        # From now on only the healed host works: the rest is done by a worker that
        # was cut off, without a restart, or not at all.
        c.workers["w1"].stop()
        sender.join(120)
        c.wait_for_all(240, "the burst did not finish")
        done = time.monotonic()
        assert_exactly_once(c.database_url, BURST)
        restarts = c.workers["w2"].restarts
        log = c.workers["w2"].log()
    assert restarts == 0, log[-3000:]  # the same process all along
    print(
        f"\npartition: cut {healed_at - cut_at:.0f} s; all fulfilled {done - healed_at:.1f} s "
        "after the heal"
    )
