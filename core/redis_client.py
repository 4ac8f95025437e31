"""The one place a Redis client is built from a URL in the settings: a single server, or
a primary found through Redis Sentinel.

A `redis://` (or `rediss://`) URL names one server. A Sentinel URL names the sentinels
watching a primary and its replicas, in kombu's form so that BROKER_URL and CACHE_URL
read alike: `sentinel://[:password@]h1:26379[/db];sentinel://h2:26379;...`, with the
primary's name in REDIS_SENTINEL_MASTER. The password (and db) are the data nodes'; the
sentinels themselves are asked without one, as kombu does.

A Sentinel-managed client asks the sentinels where the primary is on every new
connection, and drops its connections when one fails: after a failover it follows the
promoted replica without a restart. Celery's broker does the same through kombu's
`sentinel` transport (celeryconfig.py adds `master_name` to its transport options).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "sentinel"
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None


def is_sentinel(url: str) -> bool:
    return url.split("://", 1)[0] == SENTINEL_SCHEME


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Every sentinel's address; db and credentials from the first URL (kombu's rule)."""
    parts = [urlsplit(part.strip()) for part in url.split(";") if part.strip()]
    first = parts[0]
    return SentinelUrl(
        sentinels=tuple((p.hostname or "127.0.0.1", p.port or SENTINEL_PORT) for p in parts),
        db=int(first.path.strip("/") or 0),
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
    )


def without_password(url: str) -> str:
    """`url` fit for a message: each part's password replaced by ***."""
    return re.sub(r"(://[^:/@;]*:)[^@/;]*@", r"\1***@", url)


def redis_client(url: str, master_name: str, **options: Any) -> redis.Redis:
    """A client for `url`; `options` (timeouts, health checks) go to its connections,
    and the socket timeouts to the sentinels' too."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    sentinel = Sentinel(
        list(target.sentinels),
        sentinel_kwargs={k: v for k, v in options.items() if k.startswith("socket_")},
    )
    return sentinel.master_for(
        master_name,
        db=target.db,
        username=target.username,
        password=target.password,
        **options,
    )


def broker_transport_options(url: str, master_name: str) -> dict[str, Any]:
    """kombu's (and Flower's) transport options for a Redis broker (`redis://`,
    `rediss://`, `sentinel://`); none for any other. A Redis host can vanish without
    closing its TCP connections (a host lost, a partition): a socket timeout and kombu's
    health checks (which drop a BRPOP connection whose reply is overdue) make a worker
    notice, instead of its main process waiting on a dead socket in an ack or an event
    publish — where it also stops enforcing time limits (their timers run on that loop).
    With Sentinel it then asks the sentinels for the primary again (celery#6348)."""
    lost_link = {"socket_timeout": 5, "health_check_interval": 5}
    if is_sentinel(url):
        return {"master_name": master_name, **lost_link}
    if url.split("://", 1)[0] in ("redis", "rediss"):
        return lost_link
    return {}
