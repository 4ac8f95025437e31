"""Celery settings, derived from the one Settings object. Why each value:
docs/guarantees.md. The Celery app (tasks/celery_app.py) applies `celery_config`."""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from core import kombu_redis
from core.config import Settings
from core.redis_client import broker_transport_options

# "notifications": e-mail only, so a slow mail server never takes a pipeline worker's
# slot (its own worker in the Procfile and compose). "provider": the chain's first step,
# which waits 100-300 ms on the payment provider and needs a few ms of CPU: a thread-pool
# worker of its own waits for many at once, while the pipeline's prefork processes stay
# on the CPU-bound steps (docs/guarantees.md; bench.pipeline --provider-ms).
# "dead_letter_intake": a failed step's letter on its way to PostgreSQL (the dead-letter
# worker records it). "dead_letter": the open letters themselves, one message each,
# parked until an operator replays or discards the letter; no worker consumes it, so its
# length is the number of open letters (Flower's Broker page; docs/operations.md).
PARKED_QUEUE = "dead_letter"
QUEUES = (
    "pipeline",
    "provider",
    "dead_letter_intake",
    "maintenance",
    "notifications",
    PARKED_QUEUE,
)
CONSUMED_QUEUES = tuple(queue for queue in QUEUES if queue != PARKED_QUEUE)
PROVIDER_TASKS = ("tutorflow.pipeline.verify_payment", "tutorflow.pipeline.refund_unservable")


class UnsafeDeliverySettings(ValueError):
    """A configuration under which a message could run twice at the same time."""


# Brokers that redeliver an unacked message after `visibility_timeout` (RabbitMQ does so
# only when the consumer's connection closes: no timeout to get wrong there).
VISIBILITY_TRANSPORTS = ("redis", "rediss", "sentinel", "sqs")
# RabbitMQ (py-amqp): quorum queues, publisher confirms, delayed retries in the broker.
AMQP_TRANSPORTS = ("amqp", "amqps", "pyamqp")
# RabbitMQ closes the channel of a consumer that holds a delivery unacked longer than
# its `consumer_timeout` (30 min by default), and the message is redelivered.
RABBITMQ_CONSUMER_TIMEOUT = 1800


def broker_transport(url: str) -> str:
    """The transport a broker URL names: "redis", "amqp", "sentinel"…"""
    return url.split("://", 1)[0].split("+", 1)[0]


def soft_time_limit(hard: int) -> int:
    """A step's soft time limit in seconds (an exception in the task: retried like any
    transient error): 10 s before the hard limit, or a quarter of it when that is shorter."""
    return max(1, hard - min(10, hard // 4))


def check_delivery_settings(settings: Settings) -> None:
    """Refuse to start with a redelivery deadline that a task run can outlast: the broker
    would hand the still-unacked message to another worker, and the step would run twice
    at once. On Redis the deadline is the visibility timeout, and a retry waiting for its
    ETA is an unacked message too. On RabbitMQ it is the consumer timeout, and a retry
    waits in the broker (native delayed delivery), not unacked in the worker: only the
    task time limit counts.

    Nor may a step wait on PostgreSQL past its soft time limit: a statement blocked on a
    row lock (held, say, by a worker cut off mid-transaction) cannot be interrupted in
    the driver, so the hard limit would kill the process, the message would come back
    redelivered, and after POISON_WORKER_LOSSES such kills a healthy step would be parked
    as a poison message. With the workers' lock and statement timeouts below the soft
    limit, the wait ends as an error the step retries, with backoff."""
    soft_ms = soft_time_limit(settings.task_time_limit) * 1000
    for name, value in (
        ("WORKER_LOCK_TIMEOUT_MS", settings.worker_lock_timeout_ms),
        ("WORKER_STATEMENT_TIMEOUT_MS", settings.worker_statement_timeout_ms),
    ):
        if value >= soft_ms:
            raise UnsafeDeliverySettings(
                f"{name}={value} must stay under the soft time limit ({soft_ms} ms, from "
                f"CELERY_TASK_TIME_LIMIT={settings.task_time_limit} s): a step waiting on "
                "PostgreSQL that long is killed at the hard limit instead of retried, and "
                "its redeliveries count as lost workers (poison messages). Lower it or "
                "raise the time limit."
            )
    transport = broker_transport(settings.broker_url)
    if transport in AMQP_TRANSPORTS:
        if settings.task_time_limit >= RABBITMQ_CONSUMER_TIMEOUT:
            raise UnsafeDeliverySettings(
                f"CELERY_TASK_TIME_LIMIT={settings.task_time_limit} s must stay under "
                f"RabbitMQ's consumer_timeout ({RABBITMQ_CONSUMER_TIMEOUT} s by default): "
                "RabbitMQ closes the channel of a worker that holds a message unacked that "
                "long and redelivers it while it still runs. Lower the time limit."
            )
        return
    if transport not in VISIBILITY_TRANSPORTS:
        return
    countdown = (
        max(settings.retry_backoff_max, settings.provider_retry_backoff_max)
        if settings.retry_backoff
        else 0
    )
    needed = settings.task_time_limit + countdown
    if settings.visibility_timeout <= needed:
        raise UnsafeDeliverySettings(
            f"CELERY_VISIBILITY_TIMEOUT={settings.visibility_timeout} s must exceed "
            f"CELERY_TASK_TIME_LIMIT ({settings.task_time_limit} s) plus the longest retry "
            f"countdown ({countdown} s: the larger of CELERY_RETRY_BACKOFF_MAX and "
            f"PROVIDER_RETRY_BACKOFF_MAX), {needed} s in all; otherwise the broker "
            "redelivers a message still being run or waiting to retry, and it runs twice. "
            "Raise the visibility timeout or lower the others."
        )


def amqp_config() -> dict[str, Any]:
    """What RabbitMQ needs instead of the Redis settings (docs/across-hosts.md, RabbitMQ).

    Quorum queues (durable, replicated once there are several nodes) for every queue,
    the dead letter's too. Celery then turns off global QoS (a quorum queue has none: the
    prefetch count is static) and, since a worker must not hold a retry unacked until its
    ETA, sends a retry's countdown through RabbitMQ's native delayed delivery: TTL queues
    `celery_delayed_0…27` that dead-letter the message back to its queue when due,
    declared and bound by each worker at start. That binding takes topic exchanges (with
    a direct one the retry would wait, unacked, in the worker). Publisher confirms: a
    publish returns once RabbitMQ has the message, so an outbox row is stamped published
    only when its message is in the broker."""
    return {
        "task_queues": tuple(
            Queue(
                name,
                Exchange(name, type="topic"),
                routing_key=name,
                durable=True,
                queue_arguments={"x-queue-type": "quorum"},
            )
            for name in QUEUES
        ),
        "worker_detect_quorum_queues": True,
        "broker_native_delayed_delivery_queue_type": "quorum",
        "broker_transport_options": {"confirm_publish": True},
    }


# Poison messages on RabbitMQ (tasks/poison.py): the queues the steps and jobs run from
# dead-letter a message that came back unacked POISON_WORKER_LOSSES times (a quorum
# queue counts each return: a rejected-and-requeued delivery, a closed channel) to the
# `poisoned` exchange, whose queue the dead-letter worker turns into dead letters. By
# policy, not queue arguments: a policy applies to the existing queues at once and can
# change later, where a queue's arguments are fixed at its declaration (redeclaring with
# others fails with PRECONDITION_FAILED). Not the dead-letter queues: their messages are letters.
POISONED = "poisoned"
POISON_POLICY = "tutorflow-poison"
POISON_LIMITED_QUEUES = ("pipeline", "provider", "maintenance", "notifications")


def poison_policy(settings: Settings) -> dict[str, Any]:
    """The policy, as RabbitMQ's management API takes it (PUT /api/policies/vhost/name)."""
    return {
        "pattern": f"^({'|'.join(POISON_LIMITED_QUEUES)})$",
        "apply-to": "queues",
        "priority": 0,
        "definition": {
            # A quorum queue hands a message out delivery-limit + 1 times: the last loss
            # is the setting's.
            "delivery-limit": settings.poison_worker_losses - 1,
            "dead-letter-exchange": POISONED,
            # At least once (RabbitMQ 3.10+): the message leaves the queue only once the
            # `poisoned` queue has it; that strategy needs reject-publish overflow (no
            # length limit is set, so it refuses nothing).
            "dead-letter-strategy": "at-least-once",
            "overflow": "reject-publish",
        },
    }


# A payment under way comes before a new one. On Redis, kombu keeps the messages of
# each priority step (0, 3, 6, 9) of a queue in a list of their own and a worker takes
# from priority 0 first, so a chain's first step on the pipeline queue, which starts a
# new payment's fulfilment, waits at the lowest priority and every later step (priority
# 0, the default) overtakes it. Under a burst the payments already started finish
# first; the confirm → sessions time is then one queue wait, not one per step.
# (RabbitMQ's quorum queues know priorities from RabbitMQ 4.0 on; on 3.x they keep
# order, and this is not set there.)
NEW_CHAIN_PRIORITY = 9
NEW_CHAIN_TASKS = ("tutorflow.pipeline.create_purchase",)


# The steps whose retries back off as the settings say (CELERY_RETRY_*); the provider's
# steps wait up to PROVIDER_RETRY_BACKOFF_MAX between attempts (an outage lasts longer).
BACKOFF_STEPS = (
    "tutorflow.pipeline.create_purchase",
    "tutorflow.pipeline.allocate_trainer",
    "tutorflow.pipeline.schedule_sessions",
    "tutorflow.pipeline.refresh_student_views",
    "tutorflow.pipeline.compensate_refund",
    "tutorflow.pipeline.reallocate_trainer",
    "tutorflow.notifications.send",
)


def step_retries(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each step's backoff, as Celery task annotations: the task modules declare their
    tasks once for any app (shared_task), and each app applies its own settings."""
    backoff = {"retry_backoff": settings.retry_backoff, "retry_jitter": settings.retry_jitter}
    return {
        **{
            name: {**backoff, "retry_backoff_max": settings.retry_backoff_max}
            for name in BACKOFF_STEPS
        },
        **{
            name: {**backoff, "retry_backoff_max": settings.provider_retry_backoff_max}
            for name in PROVIDER_TASKS
        },
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    check_delivery_settings(settings)
    kombu_redis.install()  # a lost Redis broker never ends a worker
    config = _base_config(settings)
    config["task_annotations"] = step_retries(settings)
    if broker_transport(settings.broker_url) in AMQP_TRANSPORTS:
        config.update(amqp_config())
    else:
        config["task_routes"] = {
            **{
                name: {
                    "queue": "pipeline",
                    "routing_key": "pipeline",
                    "priority": NEW_CHAIN_PRIORITY,
                }
                for name in NEW_CHAIN_TASKS
            },
            **config["task_routes"],
        }
    return config


def _base_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            # Redis redelivers an unacked message only after this. It must exceed the
            # longest task (task_time_limit) plus the longest retry countdown
            # (retry_backoff_max): a retry waiting for its ETA is an unacked message
            # too, and would otherwise run twice.
            "visibility_timeout": settings.visibility_timeout,
            # Sweep for expired unacked messages every 10 s (kombu's default is ~100 s).
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 2,
            # How a lost Redis is noticed; with `sentinel://` URLs the primary's name too.
            **broker_transport_options(settings.broker_url, settings.redis_sentinel_master),
        },
        # Workers publish the next link of a chain before acking the current one: they
        # wait out a broker restart (about 15 s) rather than fail a step whose work is
        # committed. The API passes a short policy of its own (tasks.handoff).
        "task_publish_retry_policy": {
            "max_retries": 10,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 2,
        },
        # Nobody reads task results: chains pass values along in messages.
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        # A pool child killed mid-task (OOM, SIGKILL) requeues its message instead of
        # acking it.
        "task_reject_on_worker_lost": True,
        # Each pool process may hold up to 4 reserved messages: the next task is already
        # here when one finishes. Reserved messages count against visibility_timeout;
        # 8 short tasks are far below it.
        "worker_prefetch_multiplier": 4,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": soft_time_limit(settings.task_time_limit),
        # A task killed at the hard limit (stuck in a call no exception can reach) is
        # requeued at once, its chain intact, instead of acked and lost: the base task
        # does not dead-letter it, and the inbox makes the rerun safe.
        "task_acks_on_timeout": False,
        # Deploys: on SIGTERM (remapped to SIGQUIT by REMAP_SIGTERM) a worker finishes
        # what it can for 10 s, then requeues the rest at once instead of waiting for
        # visibility_timeout.
        "worker_soft_shutdown_timeout": 10.0,
        "worker_enable_soft_shutdown_on_idle": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": True,  # Flower's task view
        # A worker that loses its broker connection cancels the tasks it is running:
        # with acks_late their messages were never acked, so the broker hands them out
        # again (Redis after visibility_timeout, RabbitMQ at once), and the inbox makes
        # the redelivery return the stored result. Left running, a task could commit and
        # then fail to ack, or run on beside its redelivered copy. (Celery's default,
        # False, is deprecated and warns at startup.)
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_default_queue": "pipeline",
        # Each queue has its own direct exchange and routing key: a message goes to one.
        "task_queues": tuple(
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES
        ),
        "task_default_exchange": "pipeline",
        "task_default_routing_key": "pipeline",
        "task_routes": {
            **{name: {"queue": "provider", "routing_key": "provider"} for name in PROVIDER_TASKS},
            "tutorflow.dead_letters.parked": {"queue": PARKED_QUEUE, "routing_key": PARKED_QUEUE},
            "tutorflow.dead_letters.*": {
                "queue": "dead_letter_intake",
                "routing_key": "dead_letter_intake",
            },
            "tutorflow.beat.*": {"queue": "maintenance", "routing_key": "maintenance"},
            "tutorflow.notifications.*": {
                "queue": "notifications",
                "routing_key": "notifications",
            },
        },
        # Beat: one process (docker-compose, Procfile), Celery's own scheduler. A second
        # one started by mistake is harmless: each job takes a PostgreSQL advisory lock
        # (tasks/beat.py) and every job is idempotent.
        "beat_schedule_filename": settings.beat_schedule_file,
        "beat_max_loop_interval": 10,
        "beat_schedule": {
            "top-up-sessions": {
                "task": "tutorflow.beat.top_up_sessions",
                "schedule": settings.top_up_interval_seconds,
            },
            "relay-outbox": {
                "task": "tutorflow.beat.relay_outbox",
                "schedule": settings.outbox_relay_interval_seconds,
                # If workers are down, don't pile up relays: the next one covers it.
                "options": {"expires": max(1.0, settings.outbox_relay_interval_seconds * 2)},
            },
            "resume-stalled-pipelines": {
                "task": "tutorflow.beat.resume_stalled_pipelines",
                "schedule": max(1.0, settings.pipeline_stall_seconds / 4),
            },
            "give-up-unallocated": {
                "task": "tutorflow.beat.give_up_unallocated",
                "schedule": 600.0,
            },
            "release-expired-holds": {
                "task": "tutorflow.beat.release_expired_holds",
                "schedule": 60.0,
                "options": {"expires": 120.0},
            },
            "wake-waiting-allocations": {
                "task": "tutorflow.beat.wake_waiting_allocations",
                "schedule": 300.0,
                "options": {"expires": 600.0},
            },
            "prune-retention": {"task": "tutorflow.beat.prune_retention", "schedule": 3600.0},
            # The dead_letter queue holds one message per open letter: this puts back any
            # that is missing and takes out those of letters resolved (tasks/dead_letters.py).
            "settle-parked-dead-letters": {
                "task": "tutorflow.beat.settle_dead_letters",
                "schedule": 60.0,
                "options": {"expires": 120.0},
            },
        },
        "timezone": "UTC",
        "enable_utc": True,
    }
