"""A payment under way comes before a new one (celeryconfig.NEW_CHAIN_PRIORITY): on Redis
a chain's first step on the pipeline queue waits at the lowest priority, and the broker
hands out every later step first, whatever arrived before it. The step before it, the
provider's word, waits on the provider queue of its own."""

from __future__ import annotations

import uuid

import pytest
from kombu import Queue

from harness.brokers import is_rabbitmq, queue_length
from tasks.chains import fulfilment_chain
from tasks.pipeline import allocate_trainer, create_purchase, verify_payment
from tests.conftest import celery_app, settings

pytestmark = pytest.mark.skipif(
    is_rabbitmq(settings.broker_url), reason="RabbitMQ 3.x quorum queues have no priorities"
)


def test_a_later_step_is_delivered_before_new_chains_that_came_first():
    new_chains = [str(uuid.uuid4()) for _ in range(3)]
    under_way = str(uuid.uuid4())
    with celery_app.connection_for_write() as connection:
        channel = connection.default_channel
        for name in ("pipeline", "provider"):
            channel.queue_purge(name)
        try:
            for payment_id in new_chains:
                fulfilment_chain(celery_app, payment_id).apply_async()
            # The chains start on the provider queue, out of the pipeline's way.
            assert queue_length(settings.broker_url, "provider") == 3
            assert queue_length(settings.broker_url, "pipeline") == 0
            provider = Queue("provider", routing_key="provider")(channel)
            verified = []
            while (message := provider.get(no_ack=True)) is not None:
                verified.append(message.headers["task"])
            assert verified == [verify_payment.name] * 3
            # Verified: each new chain's next step enters the pipeline queue...
            for payment_id in new_chains:
                create_purchase.apply_async((payment_id,), {"correlation_id": payment_id})
            # ...and a payment under way, later, still goes first.
            allocate_trainer.apply_async((under_way,), {"correlation_id": under_way})
            assert queue_length(settings.broker_url, "pipeline") == 4
            pipeline = Queue("pipeline", routing_key="pipeline")(channel)
            delivered = []
            while (message := pipeline.get(no_ack=True)) is not None:
                delivered.append(message.headers["task"])
        finally:
            for name in ("pipeline", "provider"):
                channel.queue_purge(name)
    assert delivered == [allocate_trainer.name] + [create_purchase.name] * 3
