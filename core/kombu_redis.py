"""kombu's Redis and Sentinel transports, with one close-path bug worked around and one
client per channel (below).

When a worker loses its broker (a Sentinel failover, a Redis restart), Celery closes
the consumer's connection. kombu (5.7.0; the bug is old: celery/kombu#582, #970) may
then close a channel whose transport is already detached from its connection: closing
the channel puts back the messages it holds unacked, which needs a new Redis pool, whose
parameters come from `transport.client` — None by then. The AttributeError is no
connection error, so Celery calls it unrecoverable and the worker exits (a clean-clone
run of tests/test_sentinel.py caught one in the failover).

Here that case raises a connection error instead, which kombu and Celery already treat
as "the broker is gone": the worker reconnects and consumes again without a restart. The
messages stay in Redis's unacked hash, and the visibility-timeout sweep (every
`unacked_restore_interval` s) puts them back, as for a killed worker.
`celeryconfig.celery_config` installs these for the `redis`, `rediss` and `sentinel` schemes.
"""

from __future__ import annotations

from typing import Any

import kombu.transport
import redis
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis_transport


class _Detached:
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:  # type: ignore[attr-defined]
            raise redis.exceptions.ConnectionError("the broker connection is already closed")
        return super()._connparams(asynchronous)  # type: ignore[misc]


class _OneClient:
    """kombu builds a new `redis.Redis` for every publish (`conn_or_acquire`), with its
    response callbacks: about a tenth of a millisecond each, a dozen times a payment.
    The client holds no connection of its own (it borrows one from the channel's pool per
    command, thread-safely), so one per channel and pool serves them all."""

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous)  # type: ignore[misc]
        pool = self.pool  # type: ignore[attr-defined]
        cached = self.__dict__.get("_one_client")
        if cached is None or cached[0] is not pool:  # a new pool after a reconnect
            cached = (pool, super()._create_client(False))  # type: ignore[misc]
            self.__dict__["_one_client"] = cached
        return cached[1]


class Channel(_Detached, _OneClient, kombu_redis_transport.Channel):
    pass


class SentinelChannel(_Detached, _OneClient, kombu_redis_transport.SentinelChannel):
    pass


class Transport(kombu_redis_transport.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis_transport.SentinelTransport):
    Channel = SentinelChannel


def install() -> None:
    """Make `redis://`, `rediss://` and `sentinel://` broker URLs use these (in this
    process; before its first broker connection)."""
    TRANSPORT_ALIASES["redis"] = TRANSPORT_ALIASES["rediss"] = f"{__name__}:Transport"
    TRANSPORT_ALIASES["sentinel"] = f"{__name__}:SentinelTransport"
    for scheme in ("redis", "rediss", "sentinel"):  # resolved before: resolve again
        kombu.transport._transport_cache.pop(scheme, None)
