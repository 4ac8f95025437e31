"""A beat scheduler that sends only while it holds the leader lock in Redis.

Run one beat. If a second starts by accident it finds the lock held, sends nothing and
takes over only if the first stops renewing it (crash), within `LOCK_TTL` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Any

import redis
from celery.beat import PersistentScheduler

log = logging.getLogger(__name__)

LOCK_KEY = "tutorflow:beat:leader"
LOCK_TTL_MS = 30_000

# Renew our own lock, or take a free one; 1 if we are the leader afterwards.
_HOLD = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    redis.call('pexpire', KEYS[1], ARGV[2])
    return 1
end
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class LeaderLock:
    def __init__(self, url: str, token: str | None = None) -> None:
        self.client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self.token = token or uuid.uuid4().hex
        self.is_leader = False

    def hold(self) -> bool:
        try:
            leader = bool(self.client.eval(_HOLD, 1, LOCK_KEY, self.token, LOCK_TTL_MS))
        except redis.RedisError:
            log.warning("beat leader lock unreachable; not sending", exc_info=True)
            leader = False
        if leader != self.is_leader:
            log.info("beat %s leadership", "took" if leader else "lost")
        self.is_leader = leader
        return leader

    def release(self) -> None:
        with contextlib.suppress(redis.RedisError):  # else it expires by itself
            self.client.eval(_RELEASE, 1, LOCK_KEY, self.token)
        self.is_leader = False


class SingleBeatScheduler(PersistentScheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.leader_lock = LeaderLock(self.app.conf.broker_url)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.leader_lock.hold():
            return LOCK_TTL_MS / 3000
        return min(super().tick(*args, **kwargs), LOCK_TTL_MS / 3000)

    def close(self) -> None:
        self.leader_lock.release()
        super().close()
