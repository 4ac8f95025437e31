"""The provider sandbox speaks Stripe's API as the official library expects it: shapes,
errors, idempotency and signed webhooks (checked with stripe.Webhook.construct_event)."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import stripe

from harness.processes import wait_until
from harness.serving import SandboxServer
from sandbox.app import SandboxConfig

KEY = "sk_test_unit"
SECRET = "whsec_unit"


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[bytes, str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((body, self.headers["Stripe-Signature"]))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def provider() -> Iterator[tuple[stripe.StripeClient, list[tuple[bytes, str]]]]:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    config = SandboxConfig(KEY, webhook_url=hook, webhook_secret=SECRET)
    with SandboxServer(config) as sandbox:
        client = stripe.StripeClient(
            KEY, base_addresses={"api": sandbox.base}, max_network_retries=0
        )
        client.sandbox_base = sandbox.base  # type: ignore[attr-defined]
        try:
            yield client, _Receiver.received
        finally:
            receiver.shutdown()


def test_a_payment_intent_succeeds_with_the_test_card_and_a_signed_webhook_follows(provider):
    client, received = provider
    intent = client.v1.payment_intents.create(
        params={"amount": 9900, "currency": "eur", "metadata": {"payment_id": "p-1"}},
        options={"idempotency_key": "p-1"},
    )
    assert intent.status == "requires_payment_method"
    assert intent.client_secret.startswith(f"{intent.id}_secret_")
    again = client.v1.payment_intents.create(
        params={"amount": 9900, "currency": "eur", "metadata": {"payment_id": "p-1"}},
        options={"idempotency_key": "p-1"},
    )
    assert again.id == intent.id  # same key, same parameters: the same answer
    with pytest.raises(stripe.IdempotencyError):
        client.v1.payment_intents.create(
            params={"amount": 1, "currency": "eur"}, options={"idempotency_key": "p-1"}
        )

    paid = client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_visa"})
    assert paid.status == "succeeded"
    assert client.v1.payment_intents.retrieve(intent.id).amount_received == 9900

    wait_until(lambda: received, 10, "no webhook arrived")
    body, header = received[0]
    event = stripe.Webhook.construct_event(body.decode(), header, SECRET, tolerance=300)
    assert event.type == "payment_intent.succeeded"
    assert event.data.object.metadata["payment_id"] == "p-1"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.decode(), header, "whsec_other", tolerance=300)


def test_a_declined_card_a_refund_and_stripes_errors(provider):
    client, received = provider
    intent = client.v1.payment_intents.create(params={"amount": 5000, "currency": "usd"})
    with pytest.raises(stripe.CardError) as declined:
        client.v1.payment_intents.confirm(
            intent.id, params={"payment_method": "pm_card_chargeDeclined"}
        )
    assert declined.value.code == "card_declined"
    assert client.v1.payment_intents.retrieve(intent.id).status == "requires_payment_method"
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.payment_intents.retrieve("pi_missing")
    assert missing.value.http_status == 404

    client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_visa"})
    refund = client.v1.refunds.create(
        params={"payment_intent": intent.id}, options={"idempotency_key": "refund-1"}
    )
    same = client.v1.refunds.create(
        params={"payment_intent": intent.id}, options={"idempotency_key": "refund-1"}
    )
    assert refund.status == "succeeded" and same.id == refund.id
    wait_until(lambda: len(received) == 3, 10, "webhooks missing")
    types = [json.loads(body)["type"] for body, _ in received]
    assert types == ["payment_intent.payment_failed", "payment_intent.succeeded", "charge.refunded"]


def test_the_sandbox_can_be_told_to_fail_and_to_need_a_key(provider):
    client, _ = provider
    base = client.sandbox_base
    urllib.request.urlopen(
        urllib.request.Request(f"{base}/_sandbox/mode", data=b'{"mode": "error"}', method="POST"),
        timeout=5,
    )
    with pytest.raises(stripe.APIError):
        client.v1.payment_intents.create(params={"amount": 5000, "currency": "usd"})
    urllib.request.urlopen(
        urllib.request.Request(f"{base}/_sandbox/mode", data=b'{"mode": "normal"}', method="POST"),
        timeout=5,
    )
    wrong = stripe.StripeClient("sk_test_wrong", base_addresses={"api": base})
    with pytest.raises(stripe.AuthenticationError):
        wrong.v1.payment_intents.create(params={"amount": 5000, "currency": "usd"})


def test_the_key_goes_as_stripe_takes_it_and_a_browsers_key_only_confirms_with_the_secret():
    """Stripe takes the secret key as a Bearer token or as HTTP Basic's user (`curl -u
    sk_test_…:`); Stripe.js sends the publishable key with a PaymentIntent's
    client_secret, which lets it read and confirm that intent and nothing else."""
    import requests

    config = SandboxConfig(secret_key=KEY, publishable_key="pk_test_unit")
    with SandboxServer(config) as sandbox:
        base = f"{sandbox.base}/v1/payment_intents"
        made = requests.post(base, data={"amount": 900, "currency": "eur"}, auth=(KEY, ""))
        assert made.status_code == 200, made.text  # Basic, the key as the user
        intent = made.json()
        bearer = requests.get(f"{base}/{intent['id']}", headers={"Authorization": f"Bearer {KEY}"})
        assert bearer.status_code == 200
        assert requests.post(base, data={"amount": 900, "currency": "eur"}).status_code == 401
        browser = {"key": "pk_test_unit", "client_secret": intent["client_secret"]}
        # The publishable key cannot create, nor confirm without the right secret...
        assert (
            requests.post(base, data={"amount": 900, "currency": "eur", **browser}).status_code
            == 401
        )
        wrong = {**browser, "client_secret": intent["client_secret"] + "x"}
        confirm = f"{base}/{intent['id']}/confirm"
        assert (
            requests.post(confirm, data={**wrong, "payment_method": "pm_card_visa"}).status_code
            == 401
        )
        # ...and confirms with it, from any origin (a browser's page).
        paid = requests.post(confirm, data={**browser, "payment_method": "pm_card_visa"})
        assert (paid.status_code, paid.json()["status"]) == (200, "succeeded")
        assert paid.headers["Access-Control-Allow-Origin"] == "*"
