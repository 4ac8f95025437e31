"""The payment provider (Stripe), through its official library, behind a circuit breaker.

One `PaymentProvider` per process and settings: one breaker, and one HTTP session a
thread (stripe's client keeps them so; `_Sessions`), all through the proxy the settings
name, if any. Calls have
short connect and read timeouts and no library-level retries (the verify step retries
with backoff; the API answers 503 at once). Outcomes are sorted for the callers:

- `ProviderUnavailable`: timeout, connection error, 5xx, 429, or the breaker is open —
  nothing is known; try again later. These (and only these) count towards the breaker.
- `ProviderRejected`: the provider answered and refused (4xx, a declined card) —
  retrying the same request cannot help.

`Settings.stripe_api_base` points the library at the local sandbox (`python -m sandbox`)
in development (the sandbox's key, by default) and tests (STRIPE_API_BASE); production's
key goes to api.stripe.com.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pybreaker
import requests
import stripe

from core.config import Settings
from core.telemetry import Telemetry

log = logging.getLogger(__name__)

T = TypeVar("T")


class ProviderUnavailable(Exception):
    """The provider could not be asked (or is being left alone by the breaker)."""


class ProviderRejected(Exception):
    """The provider answered and refused the request."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class Intent:
    """What Tutorflow reads of a PaymentIntent."""

    id: str
    status: str  # requires_payment_method, succeeded, canceled, ...
    amount: int
    currency: str  # upper case, as the catalogue stores it
    metadata: Mapping[str, str]
    client_secret: str | None
    latest_charge: str | None
    # The last attempt's failure (a declined card), as the provider words it.
    failure_message: str | None = None

    @classmethod
    def of(cls, resource: Any) -> Intent:
        intent = resource.to_dict() if hasattr(resource, "to_dict") else dict(resource)
        return cls(
            id=intent["id"],
            status=intent["status"],
            amount=int(intent["amount"]),
            currency=str(intent["currency"]).upper(),
            metadata=dict(intent.get("metadata") or {}),
            client_secret=intent.get("client_secret"),
            latest_charge=intent.get("latest_charge"),
            failure_message=(intent.get("last_payment_error") or {}).get("message"),
        )


class _LogTransitions(pybreaker.CircuitBreakerListener):
    """Operators see the breaker move in the logs of the process it belongs to."""

    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        log.warning(
            "payment provider circuit breaker %s -> %s", getattr(old, "name", old), new.name
        )


class _ShareTransitions(pybreaker.CircuitBreakerListener):
    """Each process has its own breaker; /metrics (any API process) reports them all
    from the cache Redis (core.telemetry), keyed by host and pid."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        self.telemetry.breaker_changed(f"{socket.gethostname()}:{os.getpid()}", new.name)


class ConcurrentBreaker(pybreaker.CircuitBreaker):
    """pybreaker's breaker, minus its one-call-at-a-time: `CircuitBreaker.call` holds
    the breaker's lock for the whole guarded call (pybreaker#55), so every provider call
    of a process waited for the one before it — the API's threads at checkout, and the
    provider worker's threads at verify (with 1 s calls, one at a time where ten were
    wanted: tests/test_provider.py, tests/test_worker_pipeline.py).

    Closed, a call runs outside the lock and only its outcome is counted under it.
    Open and half-open keep pybreaker's own handling: refused at once while open, and
    one probe at a time (the others wait for its outcome) when half-open."""

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._lock:
            state = self.state
            if state.name != pybreaker.STATE_CLOSED:
                return state.call(func, *args, **kwargs)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            with self._lock:
                self.state._handle_error(exc)  # counts an outage, may open; re-raises
        with self._lock:
            self.state._handle_success()
        return result


def _is_outage(error: BaseException) -> bool:
    if isinstance(error, stripe.APIConnectionError | stripe.RateLimitError):
        return True
    status = getattr(error, "http_status", None)
    return isinstance(error, stripe.StripeError) and (status is None or status >= 500)


class _Sessions(threading.local):
    """Each thread's HTTP session (stripe's RequestsClient keeps one per thread), with
    `trust_env` off: requests would otherwise read the proxy settings, NO_PROXY and
    ~/.netrc from the environment again on every call (two scans of the process's
    environment a request: 3 % of a payment's instructions in the eager bench, for the
    one call the verify step makes; BENCHMARKS.md, "Issue 25, tenth session"). The
    proxy comes from the settings instead (`Settings.stripe_proxy`, read once)."""

    def __init__(self) -> None:
        self.session = requests.Session()
        self.session.trust_env = False


class _HttpClient(stripe.RequestsClient):
    """stripe's requests client, its sessions ours (`_Sessions`)."""

    def __init__(self, timeout: tuple[float, float], proxy: str | None) -> None:
        super().__init__(timeout=timeout, proxy=proxy)
        self._thread_local = _Sessions()  # the slot stripe's client keeps its sessions in


class PaymentProvider:
    """The provider's API behind one circuit breaker. One per process (bootstrap.py):
    the breaker counts every caller's failures."""

    def __init__(self, settings: Settings, telemetry: Telemetry) -> None:
        base = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
        self.client = stripe.StripeClient(
            settings.stripe_secret_key,
            base_addresses=base,  # type: ignore[arg-type]
            max_network_retries=0,
            http_client=_HttpClient(
                timeout=(settings.stripe_connect_timeout, settings.stripe_read_timeout),
                proxy=settings.stripe_proxy,
            ),
        )
        self.webhook_secrets = settings.stripe_webhook_secrets
        self.breaker = ConcurrentBreaker(
            fail_max=settings.stripe_breaker_fail_max,
            reset_timeout=settings.stripe_breaker_reset_seconds,
            # Only outages trip it: a declined card is the provider working fine.
            exclude=[lambda error: not _is_outage(error)],
            listeners=[_LogTransitions(), _ShareTransitions(telemetry)],
            name="stripe",
        )

    @property
    def state(self) -> str:
        """closed (calls go through), open (refused at once) or half-open (one probe)."""
        return str(self.breaker.current_state)

    def _call(self, what: str, action: Callable[[], T]) -> T:
        try:
            return self.breaker.call(action)
        except pybreaker.CircuitBreakerError as exc:
            raise ProviderUnavailable(f"{what}: circuit breaker open") from exc
        except stripe.StripeError as exc:
            if _is_outage(exc):
                raise ProviderUnavailable(f"{what}: {type(exc).__name__}") from exc
            raise ProviderRejected(
                exc.user_message or str(exc), code=exc.code, status=exc.http_status
            ) from exc

    def create_intent(self, *, amount_cents: int, currency: str, payment_id: str) -> Intent:
        """A PaymentIntent for this payment; the payment id is the idempotency key, so a
        retried checkout never creates a second intent."""
        return self._call(
            "create PaymentIntent",
            lambda: Intent.of(
                self.client.v1.payment_intents.create(
                    params={
                        "amount": amount_cents,
                        "currency": currency.lower(),
                        "metadata": {"payment_id": payment_id},
                    },
                    options={"idempotency_key": f"payment-{payment_id}"},
                )
            ),
        )

    def retrieve_intent(self, intent_id: str) -> Intent:
        return self._call(
            "retrieve PaymentIntent",
            lambda: Intent.of(self.client.v1.payment_intents.retrieve(intent_id)),
        )

    def refund(self, intent_id: str, *, payment_id: str) -> str:
        """Refund the whole payment (idempotent per payment); returns the refund id."""
        return self._call(
            "create Refund",
            lambda: str(
                self.client.v1.refunds.create(
                    params={"payment_intent": intent_id, "metadata": {"payment_id": payment_id}},
                    options={"idempotency_key": f"refund-{payment_id}"},
                )["id"]
            ),
        )

    def verified_event(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """A webhook's event, as JSON, once its signature verifies with one of the
        configured secrets (several while rotating), within Stripe's default 300 s
        tolerance (the library's check); raises ValueError or SignatureVerificationError.
        Not `stripe.Webhook.construct_event` after the check: it checked the signature
        again and built a StripeObject tree that the view turned straight back into a
        dict (0.18 ms a webhook, against 0.01 for the check and the JSON)."""
        if not signature:
            raise stripe.SignatureVerificationError("no Stripe-Signature header", signature)
        text = payload.decode("utf-8")
        last: Exception | None = None
        for secret in self.webhook_secrets:  # the signature first: nothing else is read
            try:
                stripe.WebhookSignature.verify_header(text, signature, secret, tolerance=300)
                break
            except stripe.SignatureVerificationError as exc:
                last = exc
        else:
            assert last is not None
            raise last
        try:
            shape = json.loads(text)
        except ValueError as exc:
            raise ValueError("the payload is not JSON") from exc
        data = shape.get("data") if isinstance(shape, dict) else None
        if not (
            isinstance(data, dict)
            and isinstance(data.get("object"), dict)
            and isinstance(shape.get("id"), str)
            and isinstance(shape.get("type"), str)
        ):
            raise ValueError("the payload is not an event")
        return shape
