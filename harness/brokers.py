"""The broker a test run uses, Redis or RabbitMQ (BROKER_URL), seen one way by the tests:
how many messages wait in a queue, and emptying every queue between tests (on Redis the
cache flush does that; a RabbitMQ vhost keeps its queues across tests and runs)."""

from __future__ import annotations

from contextlib import suppress

import amqp.exceptions
from kombu import Connection
from kombu.transport.native_delayed_delivery import level_name

from celeryconfig import AMQP_TRANSPORTS, QUEUES, broker_transport

# RabbitMQ's native delayed delivery: a retry's countdown waits in these (celeryconfig).
DELAY_QUEUES = tuple(level_name(level) for level in range(28))


def is_rabbitmq(url: str) -> bool:
    return broker_transport(url) in AMQP_TRANSPORTS


def queue_length(url: str, *queues: str) -> int:
    """Messages ready in these queues: on Redis every priority sub-list (kombu keeps a
    message with a priority in a list of its own), on RabbitMQ not counting those a
    consumer holds. Through kombu's passive declare, which answers both."""
    total = 0
    with Connection(url) as connection:
        for queue in queues:
            # A missing queue (on Redis: an empty one) closes its channel: one each.
            with connection.channel() as channel, suppress(*connection.channel_errors):
                total += channel.queue_declare(queue, passive=True).message_count
    return total


def delayed_messages(url: str) -> int:
    """Retries waiting for their countdown in RabbitMQ's delay queues."""
    return queue_length(url, *DELAY_QUEUES)


def purge_rabbitmq(url: str) -> None:
    """Empty the project's queues and the delay queues (absent ones are skipped)."""
    with Connection(url) as connection:
        for queue in (*QUEUES, *DELAY_QUEUES):
            # A missing queue closes its channel: one channel each.
            with connection.channel() as channel, suppress(amqp.exceptions.NotFound):
                channel.queue_purge(queue)
