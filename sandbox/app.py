"""The sandbox's WSGI app: PaymentIntents, refunds, webhooks, fault modes.

Shapes follow Stripe's API reference: objects carry `id`, `object`, `created`,
`livemode`; errors are `{"error": {"type", "code", "message", "param"?}}` with Stripe's
statuses (400 invalid request, 401 bad key, 402 card declined, 404 missing, 500 api).
Requests are form-encoded (`metadata[payment_id]=...`), as the stripe library sends them.
Idempotency-Key: the same key with the same parameters answers the same; with other
parameters it is a 400 `idempotency_error`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, request

log = logging.getLogger("sandbox")

# Stripe's test payment methods: https://docs.stripe.com/testing
SUCCEEDS = {"pm_card_visa", "pm_card_mastercard", "pm_card_amex"}
DECLINED = {"pm_card_chargeDeclined", "pm_card_visa_chargeDeclined"}
API_VERSION = "2025-10-29.clover"


@dataclass
class SandboxConfig:
    secret_key: str = "sk_test_tutorflow_sandbox"
    # What a browser holds (Stripe.js): it may only read and confirm a PaymentIntent
    # whose client_secret it also presents.
    publishable_key: str = "pk_test_tutorflow_sandbox"
    webhook_url: str | None = None
    webhook_secret: str = "whsec_tutorflow_sandbox"


@dataclass
class Mode:
    """How the sandbox misbehaves: normal, slow (each API call waits `delay` s) or
    error (each API call answers 500)."""

    name: str = "normal"
    delay: float = 0.0


@dataclass
class Store:
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    idempotent: dict[str, tuple[str, int, dict[str, Any]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    api_calls: int = 0
    # Slow mode: calls waiting out the delay now, and the most that ever did at once
    # (since the mode was last set): how many requests a client had in flight.
    waiting: int = 0
    most_waiting: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)


class StripeError(Exception):
    def __init__(self, status: int, type_: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": type_, "message": message, **extra}}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def new_event(type_: str, obj: dict[str, Any]) -> dict[str, Any]:
    """A Stripe event about `obj` (a copy of it as it is now), as a webhook carries it."""
    return {
        "id": new_id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": int(time.time()),
        "livemode": False,
        "type": type_,
        "data": {"object": dict(obj)},
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
    }


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """Stripe's scheme: t=<unix>,v1=HMAC-SHA256(secret, "t.payload")."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


class WebhookSender:
    """Delivers events in order from one thread, retrying failed deliveries a few times
    (Stripe retries for days; the sandbox for about half a minute)."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self.delivered: list[tuple[str, int]] = []
        threading.Thread(target=self._run, name="webhooks", daemon=True).start()

    def send(self, event: dict[str, Any]) -> None:
        if self.config.webhook_url:
            self.queue.put(event)

    def _run(self) -> None:
        while True:
            event = self.queue.get()
            for attempt in range(6):
                status = self._deliver(event)
                if 200 <= status < 300:
                    break
                time.sleep(min(8.0, 0.25 * 2**attempt))
            self.delivered.append((event["id"], status))

    def _deliver(self, event: dict[str, Any]) -> int:
        assert self.config.webhook_url is not None
        payload = json.dumps(event).encode()
        signature = sign(payload, self.config.webhook_secret, int(time.time()))
        delivery = urllib.request.Request(
            self.config.webhook_url,
            data=payload,
            headers={"Content-Type": "application/json", "Stripe-Signature": signature},
            method="POST",
        )
        try:
            with urllib.request.urlopen(delivery, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            log.warning("webhook %s answered %s", event["type"], exc.code)
            return int(exc.code)
        except OSError as exc:
            log.warning("webhook %s not delivered: %s", event["type"], exc)
            return 0


def _form() -> dict[str, Any]:
    """Stripe's form encoding: a[b]=c becomes {"a": {"b": "c"}}."""
    data: dict[str, Any] = {}
    for key, value in request.form.items(multi=False):
        if "[" in key and key.endswith("]"):
            outer, inner = key[:-1].split("[", 1)
            data.setdefault(outer, {})[inner] = value
        else:
            data[key] = value
    return data


def _api_key() -> str | None:
    """The key as Stripe takes it: `Authorization: Bearer <key>`, HTTP Basic with the key
    as the user (`curl -u sk_test_…:`), or a `key` parameter (Stripe.js)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme == "Bearer" and value:
        return value
    if scheme == "Basic" and request.authorization and request.authorization.username:
        return request.authorization.username
    return request.values.get("key") or None


def create_sandbox(config: SandboxConfig | None = None) -> Flask:
    config = config or SandboxConfig()
    app = Flask("sandbox")
    store, mode = Store(), Mode()
    webhooks = WebhookSender(config)
    app.extensions["sandbox"] = {"store": store, "mode": mode, "webhooks": webhooks}

    def emit(type_: str, obj: dict[str, Any]) -> None:
        event = new_event(type_, obj)
        store.events.append(event)
        webhooks.send(event)

    def intent_or_404(intent_id: str) -> dict[str, Any]:
        intent = store.intents.get(intent_id)
        if intent is None:
            raise StripeError(
                404,
                "invalid_request_error",
                f"No such payment_intent: '{intent_id}'",
                code="resource_missing",
                param="intent",
            )
        return intent

    def charge_of(intent: dict[str, Any], refunded: int = 0) -> dict[str, Any]:
        return {
            "id": intent["latest_charge"],
            "object": "charge",
            "amount": intent["amount"],
            "amount_refunded": refunded,
            "currency": intent["currency"],
            "payment_intent": intent["id"],
            "metadata": intent["metadata"],
            "paid": True,
            "refunded": refunded >= intent["amount"],
            "status": "succeeded",
            "created": intent["created"],
            "livemode": False,
        }

    def confirm(intent: dict[str, Any], payment_method: str | None) -> dict[str, Any]:
        if intent["status"] in ("succeeded", "canceled"):
            raise StripeError(
                400,
                "invalid_request_error",
                f"This PaymentIntent's status is {intent['status']}.",
                code="payment_intent_unexpected_state",
                payment_intent=intent,
            )
        if payment_method not in SUCCEEDS | DECLINED:
            raise StripeError(
                400,
                "invalid_request_error",
                "Use a test payment method: pm_card_visa or pm_card_chargeDeclined.",
                code="resource_missing",
                param="payment_method",
            )
        intent["payment_method"] = payment_method
        if payment_method in DECLINED:
            intent["status"] = "requires_payment_method"
            intent["last_payment_error"] = {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "generic_decline",
                "message": "Your card was declined.",
            }
            emit("payment_intent.payment_failed", intent)
            raise StripeError(
                402,
                "card_error",
                "Your card was declined.",
                code="card_declined",
                decline_code="generic_decline",
                payment_intent=intent,
            )
        intent["status"] = "succeeded"
        intent["amount_received"] = intent["amount"]
        intent["latest_charge"] = new_id("ch")
        intent["last_payment_error"] = None
        emit("payment_intent.succeeded", intent)
        return intent

    @app.errorhandler(StripeError)
    def _stripe_error(error: StripeError) -> tuple[dict[str, Any], int]:
        return error.body, error.status

    @app.before_request
    def _gate() -> Response | None:
        if request.path.startswith("/_sandbox"):
            return None
        store.api_calls += 1
        if mode.name == "slow":
            with store.lock:
                store.waiting += 1
                store.most_waiting = max(store.most_waiting, store.waiting)
            try:
                time.sleep(mode.delay)
            finally:
                with store.lock:
                    store.waiting -= 1
        if mode.name == "error":
            raise StripeError(500, "api_error", "The sandbox was told to fail.")
        if request.method == "OPTIONS":  # a browser's preflight (Stripe.js sends none)
            return Response(status=204)
        key = _api_key()
        if key is not None and hmac.compare_digest(key, config.publishable_key):
            _client_may(request.view_args or {})
        elif key is None or not hmac.compare_digest(key, config.secret_key):
            raise StripeError(401, "invalid_request_error", "Invalid API Key provided.")
        key = request.headers.get("Idempotency-Key")
        if key and request.method == "POST":
            fingerprint = json.dumps([request.path, sorted(request.form.items())])
            stored = store.idempotent.get(key)
            if stored is not None:
                if stored[0] != fingerprint:
                    raise StripeError(
                        400,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same "
                        "parameters they were first used with.",
                    )
                replay = Response(json.dumps(stored[2]), stored[1], mimetype="application/json")
                replay.headers["Idempotent-Replayed"] = "true"
                return replay
        return None

    def _client_may(view_args: dict[str, Any]) -> None:
        """The publishable key reads or confirms one PaymentIntent, with its
        client_secret (as Stripe.js does); nothing else."""
        intent_id = view_args.get("intent_id")
        allowed = request.endpoint in ("retrieve_intent", "confirm_intent")
        secret = request.values.get("client_secret", "")
        intent = store.intents.get(intent_id or "")
        if (
            not allowed
            or intent is None
            or not hmac.compare_digest(secret, intent["client_secret"])
        ):
            raise StripeError(
                401,
                "invalid_request_error",
                "A publishable key may only use a PaymentIntent with its client_secret.",
            )

    @app.after_request
    def _browsers_may_call(response: Response) -> Response:
        # Stripe's API answers browsers from any origin (Stripe.js calls it directly).
        if request.path.startswith("/v1/"):
            response.headers["Access-Control-Allow-Origin"] = "*"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST"
        return response

    @app.after_request
    def _remember(response: Response) -> Response:
        key = request.headers.get("Idempotency-Key")
        if (
            key
            and request.method == "POST"
            and not request.path.startswith("/_sandbox")
            and "Idempotent-Replayed" not in response.headers
            and response.status_code < 500
        ):
            fingerprint = json.dumps([request.path, sorted(request.form.items())])
            with store.lock:
                body = json.loads(response.get_data())
                store.idempotent.setdefault(key, (fingerprint, response.status_code, body))
        return response

    @app.post("/v1/payment_intents")
    def create_intent() -> tuple[dict[str, Any], int]:
        form = _form()
        try:
            amount = int(form["amount"])
            currency = str(form["currency"]).lower()
        except (KeyError, ValueError) as exc:
            raise StripeError(
                400, "invalid_request_error", "Missing required param: amount.", param="amount"
            ) from exc
        if amount < 50:
            raise StripeError(
                400,
                "invalid_request_error",
                "Amount must be at least 50 cents.",
                code="amount_too_small",
                param="amount",
            )
        intent_id = new_id("pi")
        intent = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_received": 0,
            "currency": currency,
            "status": "requires_payment_method",
            "client_secret": f"{intent_id}_secret_{secrets.token_hex(12)}",
            "metadata": form.get("metadata", {}),
            "payment_method": None,
            "latest_charge": None,
            "last_payment_error": None,
            "created": int(time.time()),
            "livemode": False,
        }
        with store.lock:
            store.intents[intent_id] = intent
            if form.get("confirm") == "true":
                confirm(intent, form.get("payment_method"))
        return intent, 200

    @app.get("/v1/payment_intents/<intent_id>")
    def retrieve_intent(intent_id: str) -> tuple[dict[str, Any], int]:
        return intent_or_404(intent_id), 200

    @app.post("/v1/payment_intents/<intent_id>/confirm")
    def confirm_intent(intent_id: str) -> tuple[dict[str, Any], int]:
        with store.lock:
            intent = intent_or_404(intent_id)
            return confirm(intent, _form().get("payment_method")), 200

    @app.post("/v1/payment_intents/<intent_id>/cancel")
    def cancel_intent(intent_id: str) -> tuple[dict[str, Any], int]:
        with store.lock:
            intent = intent_or_404(intent_id)
            if intent["status"] == "succeeded":
                raise StripeError(
                    400,
                    "invalid_request_error",
                    "You cannot cancel this PaymentIntent because it has a status of succeeded.",
                    code="payment_intent_unexpected_state",
                )
            intent["status"] = "canceled"
            emit("payment_intent.canceled", intent)
            return intent, 200

    @app.post("/v1/refunds")
    def create_refund() -> tuple[dict[str, Any], int]:
        form = _form()
        with store.lock:
            intent = intent_or_404(str(form.get("payment_intent", "")))
            if intent["status"] != "succeeded":
                raise StripeError(
                    400,
                    "invalid_request_error",
                    "This PaymentIntent does not have a successful charge to refund.",
                    code="charge_not_refundable",
                )
            already = sum(
                r["amount"] for r in store.refunds.values() if r["payment_intent"] == intent["id"]
            )
            amount = int(form.get("amount", intent["amount"] - already))
            if already + amount > intent["amount"] or amount <= 0:
                raise StripeError(
                    400,
                    "invalid_request_error",
                    "Charge has already been refunded.",
                    code="charge_already_refunded",
                )
            refund = {
                "id": new_id("re"),
                "object": "refund",
                "amount": amount,
                "currency": intent["currency"],
                "charge": intent["latest_charge"],
                "payment_intent": intent["id"],
                "metadata": form.get("metadata", {}),
                "reason": form.get("reason"),
                "status": "succeeded",
                "created": int(time.time()),
            }
            store.refunds[refund["id"]] = refund
            emit("charge.refunded", charge_of(intent, already + amount))
            return refund, 200

    @app.post("/_sandbox/mode")
    def set_mode() -> dict[str, Any]:
        wanted = request.get_json(force=True) or {}
        if wanted.get("mode") not in ("normal", "slow", "error"):
            raise StripeError(400, "invalid_request_error", "mode: normal, slow or error")
        mode.name = wanted["mode"]
        mode.delay = float(wanted.get("delay", 0))
        with store.lock:
            store.most_waiting = store.waiting
        return {"mode": mode.name, "delay": mode.delay}

    @app.get("/_sandbox/state")
    def state() -> dict[str, Any]:
        return {
            "mode": mode.name,
            "api_calls": store.api_calls,
            "most_calls_at_once": store.most_waiting,
            "payment_intents": len(store.intents),
            "refunds": len(store.refunds),
            "events": [{"id": e["id"], "type": e["type"]} for e in store.events],
            "webhooks_delivered": webhooks.delivered,
        }

    @app.get("/_sandbox/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
