"""Redis as cache and live-event bus: the student's read models and pub/sub.

Read models are cache-aside with a *version per student*. A reader notes the version
before it reads the database and may store what it read only if the version has not
moved since (a compare-and-set in Lua). Invalidation, which runs after the commit it
depends on, bumps the version and deletes the entries in one MULTI. So a slow reader
that loaded data from before a commit can never write it back over the invalidation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any, cast

import redis

from core.config import Settings
from core.redis_client import redis_client

log = logging.getLogger(__name__)

READ_MODEL_TTL = 300  # a fallback only: every change invalidates explicitly
READ_MODELS = ("home", "learning")
STATS_KEY = "stats:read_model"

# KEYS: entry, version, hit counter, miss counter → [entry or nil, version or nil]
_LOOKUP = """
local entry = redis.call('get', KEYS[1])
if entry then redis.call('incr', KEYS[3]) else redis.call('incr', KEYS[4]) end
return {entry, redis.call('get', KEYS[2])}
"""
# KEYS: entry, version; ARGV: version seen before the read, value, ttl → 1 if stored
_FILL = """
if (redis.call('get', KEYS[2]) or '0') == ARGV[1] then
    redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3])
    return 1
end
return 0
"""


def read_model_key(kind: str, student_id: int) -> str:
    return f"student:{kind}:{student_id}"


def version_key(student_id: int) -> str:
    return f"student:version:{student_id}"


def student_keys(student_id: int) -> tuple[str, ...]:
    return tuple(read_model_key(kind, student_id) for kind in READ_MODELS)


def student_channel(student_id: int) -> str:
    return f"student:{student_id}:events"


_ANY_ID = 2**63 - 1  # stands for the Lua variable `id` in a key


def _lua_key(key: str) -> str:
    """A key made for `_ANY_ID`, as a Lua expression of the variable `id`: each key is
    spelled once, by its function, here and in the scripts."""
    before, after = key.split(str(_ANY_ID))
    return f"'{before}' .. id .. '{after}'"


# ARGV: n students, their ids, then pairs (student id, event JSON). One command however
# many students a commit touched: for each student, bump the version and drop the
# entries; then publish each event. A script runs atomically, like the MULTI it replaces,
# and the server does the per-student work (a top-up batch touches a thousand students).
_INVALIDATE_AND_PUBLISH = """
local n = tonumber(ARGV[1])
for i = 2, n + 1 do
    local id = ARGV[i]
    redis.call('incr', {version})
    redis.call('del', {entries})
end
for i = n + 2, #ARGV, 2 do
    local id = ARGV[i]
    redis.call('publish', {channel}, ARGV[i + 1])
end
return n
""".format(
    version=_lua_key(version_key(_ANY_ID)),
    entries=", ".join(_lua_key(read_model_key(kind, _ANY_ID)) for kind in READ_MODELS),
    channel=_lua_key(student_channel(_ANY_ID)),
)


class Cache:
    """One Redis (CACHE_URL, a server or a Sentinel-managed primary): read models, their
    versions, live events, stats."""

    def __init__(self, url: str, sentinel_master: str) -> None:
        self.url = url
        self.client = redis_client(
            url,
            sentinel_master,
            socket_connect_timeout=2,
            socket_timeout=2,
            health_check_interval=30,
        )
        self._invalidate_and_publish = self.client.register_script(_INVALIDATE_AND_PUBLISH)

    @classmethod
    def from_settings(cls, settings: Settings) -> Cache:
        """A new client and connection pool: the composition root (bootstrap.py) makes
        one per process."""
        return cls(settings.cache_url, settings.redis_sentinel_master)

    def cached_read_model(
        self, kind: str, student_id: int, load: Callable[[], str]
    ) -> tuple[str, bool]:
        """The read model's JSON from the cache, or `load()`ed and stored if still current.

        Entries are the response body itself, so a hit is served without decoding or
        re-serializing. Returns (json, hit); with Redis down, the database answers.
        """
        key, version = read_model_key(kind, student_id), version_key(student_id)
        try:
            entry, seen = cast(
                list[Any],
                self.client.eval(
                    _LOOKUP, 4, key, version, f"{STATS_KEY}:{kind}:hit", f"{STATS_KEY}:{kind}:miss"
                ),
            )
        except redis.RedisError:
            log.warning("cache unavailable, reading the database", exc_info=True)
            return load(), False
        if entry is not None:
            log.debug("cache hit", extra={"student_id": student_id, "view": kind})
            return entry.decode(), True
        log.info("cache miss", extra={"student_id": student_id, "view": kind})
        body = load()
        try:
            stored = self.client.eval(
                _FILL, 2, key, version, (seen or b"0").decode(), body, READ_MODEL_TTL
            )
        except redis.RedisError:
            return body, False
        log.info(
            "cache fill" if stored else "cache fill skipped: invalidated meanwhile",
            extra={"student_id": student_id, "view": kind},
        )
        return body, False

    def invalidate_and_announce(self, events: Iterable[tuple[int, dict[str, Any]]]) -> None:
        """Bump each student's version, drop their entries and publish the live events,
        in one MULTI round trip after the commit they follow; raises if Redis is down."""
        events = list(events)
        if not events:
            return
        students = {student_id for student_id, _ in events}
        published = [
            part
            for student_id, event in events
            for part in (student_id, json.dumps(event, default=str))
        ]
        self._invalidate_and_publish(args=[len(students), *students, *published])
        # DEBUG: it follows every commit that writes an event (four a payment), and the
        # step's own line already says what changed.
        log.debug(
            "cache invalidate",
            extra={"students": sorted(students)[:20], "reason": events[0][1].get("type", "?")},
        )

    def announce(self, events: Iterable[tuple[int, dict[str, Any]]]) -> None:
        """Best effort: a stale entry expires by TTL, and the chain's last step
        invalidates again with retries."""
        try:
            self.invalidate_and_announce(events)
        except redis.RedisError:
            log.warning("student notification failed", exc_info=True)

    def read_model_stats(self) -> dict[str, dict[str, int]]:
        """Hit and miss counts per read model, shared by every API process."""
        names = [f"{STATS_KEY}:{k}:{result}" for k in READ_MODELS for result in ("hit", "miss")]
        values = cast(list[Any], self.client.mget(names))
        stats: dict[str, dict[str, int]] = {kind: {} for kind in READ_MODELS}
        for name, value in zip(names, values, strict=True):
            _, _, kind, result = name.split(":")
            stats[kind][result] = int(value or 0)
        return stats

    def claim(self, key: str, seconds: int) -> bool:
        """True if `key` was free (the caller now holds it for `seconds`, or until
        `release`). True as well if Redis is away: for a debounce, doing a thing twice
        is harmless, not doing it is not."""
        try:
            return bool(self.client.set(key, "1", nx=True, ex=seconds))
        except redis.RedisError:
            log.warning("cache claim failed; acting as if free", exc_info=True)
            return True

    def release(self, key: str) -> None:
        try:
            self.client.delete(key)
        except redis.RedisError:
            log.warning("cache release failed (it expires)", exc_info=True)
