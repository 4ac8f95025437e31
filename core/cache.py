"""Redis as cache and live-event bus: the student's read-model keys and pub/sub.

Every call here runs after the database commit it depends on (see models.session).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

from core.config import settings

log = logging.getLogger(__name__)

_client: redis.Redis | None = None


def cache_client() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(
            settings.cache_url, socket_connect_timeout=2, socket_timeout=2, health_check_interval=30
        )
    return _client


def student_keys(student_id: int) -> tuple[str, str]:
    return f"student:home:{student_id}", f"student:learning:{student_id}"


def student_channel(student_id: int) -> str:
    return f"student:{student_id}:events"


def invalidate_student(student_id: int, reason: str) -> None:
    """Drop the student's read models; raises if Redis is unreachable."""
    cache_client().delete(*student_keys(student_id))
    log.info("cache invalidate", extra={"student_id": student_id, "reason": reason})


def publish_student_event(student_id: int, event: dict[str, Any]) -> None:
    cache_client().publish(student_channel(student_id), json.dumps(event, default=str))


def notify_student(student_id: int, event: dict[str, Any]) -> None:
    """Best effort: a stale entry expires by TTL and the last step retries its own."""
    try:
        invalidate_student(student_id, reason=event.get("type", "unknown"))
        publish_student_event(student_id, event)
    except redis.RedisError:
        log.warning("student notification failed", exc_info=True, extra={"student_id": student_id})


def notify_students(events: list[tuple[int, dict[str, Any]]]) -> None:
    """`notify_student` for many students in one Redis round trip (beat jobs)."""
    if not events:
        return
    try:
        pipe = cache_client().pipeline(transaction=False)
        pipe.delete(*(key for student_id, _ in events for key in student_keys(student_id)))
        for student_id, event in events:
            pipe.publish(student_channel(student_id), json.dumps(event, default=str))
        pipe.execute()
        log.info("cache invalidate", extra={"students": len(events), "reason": "batch"})
    except redis.RedisError:
        log.warning("batch student notification failed", exc_info=True)
