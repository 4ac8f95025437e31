"""The provider adapter (core.provider) against the sandbox over real HTTP: outages are
told apart from refusals, timeouts are short, and the breaker opens and closes."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.provider import PaymentProvider, ProviderRejected, ProviderUnavailable
from harness.serving import SandboxServer
from tests.conftest import services, settings


def provider_for(base: str, **overrides: object) -> PaymentProvider:
    return PaymentProvider(
        dataclasses.replace(
            settings,
            stripe_api_base=base,
            stripe_secret_key="sk_test_tutorflow_sandbox",
            **overrides,  # type: ignore[arg-type]
        ),
        services.telemetry,
    )


def test_an_intent_is_created_once_per_payment_and_read_back():
    with SandboxServer() as sandbox:
        provider = provider_for(sandbox.base)
        first = provider.create_intent(amount_cents=9900, currency="EUR", payment_id="p-1")
        again = provider.create_intent(amount_cents=9900, currency="EUR", payment_id="p-1")
        assert again.id == first.id  # the payment id is the idempotency key
        read = provider.retrieve_intent(first.id)
        assert (read.amount, read.currency, dict(read.metadata)) == (
            9900,
            "EUR",
            {"payment_id": "p-1"},
        )
        assert read.status == "requires_payment_method"
        assert sandbox.state()["payment_intents"] == 1


def test_a_refusal_is_rejected_and_does_not_trip_the_breaker():
    with SandboxServer() as sandbox:
        provider = provider_for(sandbox.base, stripe_breaker_fail_max=2)
        for _ in range(4):
            with pytest.raises(ProviderRejected) as refused:
                provider.retrieve_intent("pi_missing")
            assert refused.value.status == 404
        assert provider.state == "closed"


def test_outages_open_the_breaker_which_then_refuses_without_calling(monkeypatch):
    with SandboxServer() as sandbox:
        provider = provider_for(
            sandbox.base, stripe_breaker_fail_max=3, stripe_breaker_reset_seconds=1.0
        )
        sandbox.set_mode("error")
        for _ in range(3):
            with pytest.raises(ProviderUnavailable):
                provider.retrieve_intent("pi_any")
        assert provider.state == "open"
        calls = sandbox.state()["api_calls"]
        with pytest.raises(ProviderUnavailable, match="breaker open"):
            provider.retrieve_intent("pi_any")
        assert sandbox.state()["api_calls"] == calls  # refused without a call

        sandbox.set_mode("normal")
        time.sleep(1.1)  # the breaker's reset timeout: the next call is a probe
        intent = provider.create_intent(amount_cents=5000, currency="USD", payment_id="p-2")
        assert intent.status == "requires_payment_method"
        assert provider.state == "closed"


def test_a_slow_provider_times_out_quickly_and_a_stopped_one_is_unavailable():
    with SandboxServer() as sandbox:
        provider = provider_for(sandbox.base, stripe_read_timeout=0.3)
        sandbox.set_mode("slow", delay=2.0)
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable):
            provider.retrieve_intent("pi_any")
        assert time.monotonic() - started < 1.5
        sandbox.set_mode("normal")
        sandbox.stop()
        with pytest.raises(ProviderUnavailable):
            provider.retrieve_intent("pi_any")


def test_calls_from_several_threads_are_in_flight_together():
    """One provider (one breaker) per process, shared by the API's threads and the
    provider worker's: eight calls from eight threads overlap at the provider instead of
    queueing behind the breaker's lock one by one."""
    with SandboxServer() as sandbox:
        provider = provider_for(sandbox.base)
        intent = provider.create_intent(amount_cents=9900, currency="EUR", payment_id="p-3")
        sandbox.set_mode("slow", delay=0.5)
        with ThreadPoolExecutor(8) as pool:
            read = list(pool.map(lambda _: provider.retrieve_intent(intent.id), range(8)))
        assert {r.id for r in read} == {intent.id}
        assert sandbox.state()["most_calls_at_once"] == 8
        assert provider.state == "closed"


def test_concurrent_outages_open_the_breaker_once_and_then_it_refuses():
    with SandboxServer() as sandbox:
        provider = provider_for(sandbox.base, stripe_breaker_fail_max=3)
        sandbox.set_mode("error")

        def ask(_: int) -> str:
            try:
                provider.retrieve_intent("pi_any")
            except ProviderUnavailable as exc:
                return str(exc)
            return "answered"

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(ask, range(24)))
        assert "answered" not in outcomes
        assert provider.state == "open"
        calls = sandbox.state()["api_calls"]
        assert any("breaker open" in outcome for outcome in outcomes)
        with pytest.raises(ProviderUnavailable, match="breaker open"):
            provider.retrieve_intent("pi_any")
        assert sandbox.state()["api_calls"] == calls
