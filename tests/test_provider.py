"""The provider adapter (core.provider) against the sandbox over real HTTP: outages are
told apart from refusals, timeouts are short, and the breaker opens and closes."""

from __future__ import annotations

import dataclasses
import http.client
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from core.config import Settings, proxy_for
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


class _Proxy:
    """A forward HTTP proxy on loopback: relays each request to the address its request
    line names and keeps the addresses it was asked for."""

    def __init__(self) -> None:
        asked: list[str] = []
        self.asked = asked

        class Relay(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                asked.append(self.path)  # the absolute URL, as a client sends a proxy
                target = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                upstream = http.client.HTTPConnection(target.netloc, timeout=5)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "proxy-connection"}
                upstream.request(
                    self.command,
                    target.path + (f"?{target.query}" if target.query else ""),
                    body=self.rfile.read(length) if length else None,
                    headers=headers,
                )
                answer = upstream.getresponse()
                body = answer.read()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                upstream.close()

            do_GET = do_POST = _relay

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Relay)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> _Proxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("url", "environ", "proxy"),
    [
        ("https://api.stripe.com", {}, None),
        ("https://api.stripe.com", {"HTTPS_PROXY": "http://p:3128"}, "http://p:3128"),
        ("https://api.stripe.com", {"HTTP_PROXY": "http://p:3128"}, None),
        ("http://127.0.0.1:12111", {"HTTP_PROXY": "http://p:3128"}, "http://p:3128"),
        ("https://api.stripe.com", {"ALL_PROXY": "http://a:1"}, "http://a:1"),
        (
            "https://api.stripe.com",
            {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:1"},
            "http://lower:1",
        ),
        ("https://api.stripe.com", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, None),
        ("https://api.stripe.com", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "stripe.com"}, None),
        ("https://api.stripe.com", {"HTTPS_PROXY": "http://p:1", "no_proxy": ".stripe.com"}, None),
        (
            "https://api.stripe.com",
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "pe.com, example.org"},
            "http://p:1",
        ),
        ("http://127.0.0.1:12111", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "127.0.0.0/8"}, None),
        ("http://127.0.0.1:12111", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "127.0.0.1"}, None),
        (
            "http://127.0.0.1:12111",
            {"HTTP_PROXY": "http://p:1", "NO_PROXY": "127.0.0.1:9"},
            "http://p:1",
        ),
        ("http://[::1]:12111", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "::1"}, None),
    ],
    ids=lambda value: str(value),
)
def test_the_providers_proxy_is_read_from_the_environment_as_requests_reads_it(url, environ, proxy):
    assert proxy_for(url, environ) == proxy


def test_the_provider_calls_through_its_settings_proxy_and_reads_no_environment(
    monkeypatch,
):
    """The proxy is decided once, with the settings (HTTP(S)_PROXY, ALL_PROXY,
    NO_PROXY for the provider's address); a call does not scan the environment again."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    with SandboxServer() as sandbox, _Proxy() as proxy:
        environ = {"STRIPE_API_BASE": sandbox.base, "HTTP_PROXY": proxy.url}
        assert Settings.from_env(environ).stripe_proxy == proxy.url
        assert Settings.from_env({**environ, "NO_PROXY": "127.0.0.1"}).stripe_proxy is None

        proxied = provider_for(sandbox.base, stripe_proxy=proxy.url)
        intent = proxied.create_intent(amount_cents=9900, currency="EUR", payment_id="p-proxy")
        assert proxied.retrieve_intent(intent.id).id == intent.id
        assert proxy.asked == [
            f"{sandbox.base}/v1/payment_intents",
            f"{sandbox.base}/v1/payment_intents/{intent.id}",
        ]

        # A process whose settings name no proxy calls directly, whatever its
        # environment says by the time of the call.
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        direct = provider_for(sandbox.base, stripe_proxy=None)
        assert direct.retrieve_intent(intent.id).id == intent.id
        assert len(proxy.asked) == 2
