"""Flower's Broker page (and its /api/queues/length) lists only the queues that some
online worker says it consumes. The `dead_letter` queue, where each open dead letter's
message waits for an operator (celeryconfig.PARKED_QUEUE), has no consumer by design,
so Flower would never show it. `install`, called from flowerconfig.py, lists such queues
too; their counts come from the broker as for any other (Redis list lengths, RabbitMQ's
management API).

Written against Flower 2.2 (`BaseHandler.get_active_queue_names`, which both the page
and the API call); tests/test_flower_browser.py reads the page.
"""

from __future__ import annotations

from collections.abc import Iterable

from flower.views import BaseHandler


def install(queues: Iterable[str]) -> None:
    unconsumed = frozenset(queues)
    consumed = BaseHandler.get_active_queue_names

    def listed(handler: BaseHandler) -> list[str]:
        return sorted({*consumed(handler), *unconsumed})

    BaseHandler.get_active_queue_names = listed
