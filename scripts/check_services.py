"""Fail fast, with a clear message, when PostgreSQL or Redis is not reachable."""

from __future__ import annotations

import sys

import psycopg2
import redis
from sqlalchemy.engine import make_url

from core.config import get_settings
from core.redis_client import redis_client, without_password

settings = get_settings()

POSTGRES_HINT = (
    "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
)
REDIS_HINT = (
    'start it with: redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
    "--appendonly no"
)


def main() -> int:
    problems = []
    # The dialect's own reading of the URL: one server, or several (?host=a&host=b).
    url = make_url(settings.database_url).set(database="postgres")
    _, libpq = url.get_dialect()().create_connect_args(url)
    where = f"{libpq.get('host')}:{libpq.get('port') or 5432}"
    try:
        psycopg2.connect(**libpq, connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0]
        problems.append(f"PostgreSQL at {where} is not reachable ({first_line}); {POSTGRES_HINT}")
    # The cache is always Redis; the broker too unless BROKER_URL names RabbitMQ.
    redis_urls = {settings.cache_url}
    if settings.broker_url.startswith(("redis", "rediss", "sentinel")):
        redis_urls.add(settings.broker_url)
    for redis_url in sorted(redis_urls):
        try:
            redis_client(redis_url, settings.redis_sentinel_master, socket_connect_timeout=3).ping()
        except redis.RedisError as exc:
            where = without_password(redis_url)
            problems.append(f"Redis at {where} is not reachable ({exc}); {REDIS_HINT}")
    for problem in problems:
        print(f"tutorflow: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
