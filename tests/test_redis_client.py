"""Redis through Sentinel (core/redis_client.py): the settings, the Celery transport
options, and the API's own Redis clients (cache, rate limiter, readiness probe) on a
real primary + replica + three sentinels, following a failover without a restart.

The whole pipeline through a failover (workers, beat, Flower, lost messages recovered
from bootstrap import bootstrap
from PostgreSQL) is tests/test_sentinel.py, in the multi-host suite.
"""

from __future__ import annotations

import dataclasses
import uuid

import redis
from kombu import Connection, Exchange, Queue

from celeryconfig import celery_config
from core import kombu_redis
from core.cache import student_keys
from core.config import Settings
from core.redis_client import parse_sentinel_url, without_password
from harness.processes import SENTINEL_MASTER, sentinel_redis, wait_until
from tests.conftest import settings

SENTINELS = "sentinel://:pw@10.0.0.1:26379/2;sentinel://10.0.0.2;sentinel://10.0.0.3:26380"


def test_a_sentinel_url_names_every_sentinel_and_the_first_ones_db_and_password():
    target = parse_sentinel_url(SENTINELS)
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26380))
    assert (target.db, target.username, target.password) == (2, None, "pw")
    assert without_password(SENTINELS).startswith("sentinel://:***@10.0.0.1:26379/2;")
    assert (
        without_password("redis://u:p@h:1/0;sentinel://h2") == "redis://u:***@h:1/0;sentinel://h2"
    )


def test_a_sentinel_broker_gets_the_master_name_and_the_cache_follows_the_broker():
    sentinel = Settings.from_env({"BROKER_URL": SENTINELS, "REDIS_SENTINEL_MASTER": "main"})
    assert sentinel.cache_url == SENTINELS
    options = celery_config(sentinel)["broker_transport_options"]
    assert options["master_name"] == "main"
    assert options["socket_timeout"] > 0  # a vanished primary is noticed (celery#6348)
    plain = celery_config(Settings.from_env({"BROKER_URL": "redis://127.0.0.1:6379/0"}))
    assert "master_name" not in plain["broker_transport_options"]


def test_the_apis_redis_clients_follow_a_failover_without_a_restart(engine):
    from app import create_app
    from bootstrap import bootstrap

    with sentinel_redis() as group:
        on_sentinel = dataclasses.replace(
            settings,
            broker_url=group.url,
            cache_url=group.url,
            redis_sentinel_master=SENTINEL_MASTER,
            rate_limit_public="3/minute",
        )
        app = create_app(on_sentinel, testing=True)
        client = app.test_client()
        cache = bootstrap(on_sentinel).cache
        assert client.get("/readyz").json["checks"]["broker"] == "ok"
        cache.client.set(student_keys(1)[0], "before")

        group.kill_primary()
        wait_until(lambda: group.master_port() == group.replica.port, 60, "no failover")

        # Readiness asks the promoted replica; the cache reads what it replicated and
        # invalidates on it; the rate limiter counts there (the 4th call is refused).
        wait_until(
            lambda: client.get("/readyz").json["checks"]["broker"] == "ok",
            30,
            "readiness never reached the new primary",
        )
        assert cache.client.get(student_keys(1)[0]) == b"before"
        cache.invalidate_and_announce([(1, {"type": "TEST"})])
        assert cache.client.get(student_keys(1)[0]) is None
        answers = [client.get("/api/v1/events/recent").status_code for _ in range(4)]
        assert answers[-1] == 429
        assert group.replica.client().keys("LIMITS:*")  # counted on the new primary


def test_the_compose_sentinel_profile_has_a_quorum_and_the_env_file_names_it():
    from tests.test_operations import COMPOSE, ROOT

    services = COMPOSE["services"]
    profile = sorted(n for n, s in services.items() if "sentinel" in s.get("profiles", []))
    assert profile == ["redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"]
    assert services["redis-replica"]["command"][-4:-2] == ["redis", "6379"]  # --replicaof
    for name in profile[1:]:
        assert "sentinel monitor tutorflow redis 6379 2" in services[name]["command"][-1]
    env = dict(
        line.split("=", 1)
        for line in (ROOT / "ops/sentinel.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for url in (env["BROKER_URL"], env["CACHE_URL"]):
        assert [host for host, _ in parse_sentinel_url(url).sentinels] == profile[1:]
    assert env["REDIS_SENTINEL_MASTER"] == "tutorflow"


def test_a_channel_closed_after_its_connection_gives_a_connection_error_and_keeps_its_message():
    """kombu's close path after a lost broker (core/kombu_redis.py): closing a channel
    that holds a message unacked, once its transport has let go of the connection, used
    to raise AttributeError, which made Celery end the worker. Now a connection error
    (kombu swallows it while closing) and the message waits in the unacked hash for the
    visibility sweep."""
    kombu_redis.install()
    name = f"close-{uuid.uuid4().hex}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    client = redis.Redis.from_url(settings.cache_url)
    with Connection(settings.cache_url) as connection:
        assert isinstance(connection.transport, kombu_redis.Transport)
        connection.Producer().publish(
            {"n": 1}, exchange=queue.exchange, routing_key=name, declare=[queue]
        )
        channel = connection.channel()
        message = queue(channel).get()
        assert message is not None
        try:
            connection.transport.client = None  # as kombu's Connection._close leaves it
            channel._disconnect_pools()  # as the redis Channel.close does first
            connection.maybe_close_channel(channel)  # kombu's own: AttributeError
            assert client.hexists(channel.unacked_key, message.delivery_tag)
        finally:
            client.hdel("unacked", message.delivery_tag)
            client.zrem("unacked_index", message.delivery_tag)
            client.delete(name, f"_kombu.binding.{name}")
