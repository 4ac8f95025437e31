"""A payment under way comes before a new one (celeryconfig.NEW_CHAIN_PRIORITY): on Redis
a chain's first step waits at the lowest priority, and the broker hands out every later
step first, whatever arrived before it."""

from __future__ import annotations

import uuid

import pytest
from kombu import Queue

from harness.brokers import is_rabbitmq, queue_length
from tasks.celery_app import celery_app
from tasks.pipeline import create_purchase, fulfilment_chain
from tests.conftest import settings

pytestmark = pytest.mark.skipif(
    is_rabbitmq(settings.broker_url), reason="RabbitMQ 3.x quorum queues have no priorities"
)


def test_a_later_step_is_delivered_before_new_chains_that_came_first():
    new_chains = [str(uuid.uuid4()) for _ in range(3)]
    under_way = str(uuid.uuid4())
    with celery_app.connection_for_write() as connection:
        channel = connection.default_channel
        channel.queue_purge("pipeline")
        try:
            for payment_id in new_chains:
                fulfilment_chain(payment_id).apply_async()
            create_purchase.apply_async((under_way,), {"correlation_id": under_way})
            assert queue_length(settings.broker_url, "pipeline") == 4
            pipeline = Queue("pipeline", routing_key="pipeline")(channel)
            delivered = []
            while (message := pipeline.get(no_ack=True)) is not None:
                delivered.append(message.headers["task"])
        finally:
            channel.queue_purge("pipeline")
    assert delivered == [create_purchase.name] + ["tutorflow.pipeline.verify_payment"] * 3
