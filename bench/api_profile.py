"""Where the API's CPU per payment goes: the two requests a payment brings to the API in
the knee bench's realistic flow — the provider's signed `payment_intent.succeeded`
webhook, then the student's app's POST /payments/{id}/confirm — through the real app
(`create_app`: its limiter, security headers, CORS, metrics, request log at the stack's
level) in this process, on the bench stores. The pipeline does not run: the chain's
first message waits in the bench Redis.

The figure is this (main) thread's CPU per payment for each request, beside the
reference measured in the same run: the same app's bare JSON endpoint (parse the body,
answer JSON: every hook and header the app adds, no view) requested as often, through
the same in-process client. What it leaves out: gunicorn's HTTP parsing and threads,
PostgreSQL's and Redis's side (the knee has them). With --instructions it runs itself
under valgrind's callgrind and counts the main thread's instructions instead of timing
(bench/profiling.py: repeats to about 0.1 %, where timed runs move by ±15 % here).

    python -m bench.api_profile [--payments 200] [--top 30] [--output FILE.prof]
    python -m bench.api_profile --instructions [--payments 10]
"""

from __future__ import annotations

import os
import tempfile

# As gunicorn.conf.py does before prometheus_client loads: every request's samples go
# to the multi-process files, as they do in the stack.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tutorflow-api-profile-")

import argparse
import cProfile
import dataclasses
import json
import logging
import shutil
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

from flask import Flask, jsonify, request
from sqlalchemy import text

import bench.common as common
from app import create_app
from bench import profiling
from bench.knee import checked_out_here, seed_realistic
from bench.profiling import Instructions
from bootstrap import bootstrap
from core.logs import configure_logging
from sandbox.app import SandboxConfig, new_event, sign

WEBHOOK = "/api/v1/webhooks/stripe"
CONFIRM = "/api/v1/payments/%s/confirm"
BARE = "/bench/ref/bare/%s"


@dataclasses.dataclass
class Payment:
    id: uuid.UUID
    token: str
    webhook_body: bytes
    webhook_headers: dict[str, str]


def _bare(token: str) -> Any:
    """The reference: what bench/reference_wsgi.py's bare endpoint does."""
    body = request.get_json(silent=True) or {}
    return jsonify(token=token, provider_payment_id=body.get("provider_payment_id")), 202


def _intent(intent_id: str) -> dict[str, Any]:
    """The PaymentIntent as the sandbox's JSON: what its webhook event carries."""
    asked = urllib.request.Request(
        f"{common.settings.stripe_api_base}/v1/payment_intents/{intent_id}",
        headers={"Authorization": f"Bearer {SandboxConfig().secret_key}"},
    )
    with urllib.request.urlopen(asked, timeout=10) as answer:
        return dict(json.load(answer))


def paid(services: Any, course_id: int, count: int) -> list[Payment]:
    """`count` payments checked out and paid at the sandbox, each with the webhook the
    sandbox would send for it, signed now (Stripe's tolerance is 300 s); not timed."""
    ids = checked_out_here(services, course_id, count)
    with services.api_database.engine.connect() as connection:
        rows = {
            payment_id: (intent_id, student_id)
            for payment_id, intent_id, student_id in connection.execute(
                text(
                    "SELECT id, provider_payment_id, student_id FROM payments WHERE id = ANY(:ids)"
                ),
                {"ids": ids},
            )
        }
    payments = []
    secret = SandboxConfig().webhook_secret
    for payment_id in ids:
        intent_id, student_id = rows[payment_id]
        event = new_event("payment_intent.succeeded", _intent(intent_id))
        body = json.dumps(event).encode()
        headers = {
            "Content-Type": "application/json",
            "Stripe-Signature": sign(body, secret, int(time.time())),
        }
        token = services.tokens.issue(student_id)
        payments.append(Payment(payment_id, token, body, headers))
    return payments


def _hooks_without(app: Flask, name: str) -> None:
    """The app's before- and after-request hooks whose function's repr names `name`."""
    for hooks in (app.before_request_funcs, app.after_request_funcs):
        for key, funcs in hooks.items():
            hooks[key] = [f for f in funcs if name not in repr(getattr(f, "func", f))]


def _jwt_verified_once(services: Any) -> None:
    """Each token verified when it is issued (before the clock), then looked up."""
    tokens = services.tokens
    issue, verify, known = tokens.issue, tokens.verify, {}

    def issued(student_id: int) -> str:
        token = issue(student_id)
        known[token] = verify(token)
        return str(token)

    tokens.issue, tokens.verify = issued, lambda token: known.get(token) or verify(token)


# What --without takes out of the app for a run (to price one part: run with and without
# it, counted): each is a bench-only change to this process's app.
WITHOUT: dict[str, Callable[[Flask, Any], None]] = {
    # flask-talisman's security headers (its before- and after-request hooks)
    "talisman": lambda app, _: _hooks_without(app, "Talisman"),
    # flask-limiter's check of the public endpoints (a Redis counter)
    "limiter": lambda app, _: [setattr(x, "enabled", False) for x in app.extensions["limiter"]],
    # the request's latency histogram and its log line (app/metrics.py)
    "metrics": lambda app, _: _hooks_without(app, "_observe"),
    # the request's log line only
    "request-log": lambda *_: logging.getLogger("tutorflow.requests").setLevel(logging.WARNING),
    # the student's token verified once per token, not per request
    "jwt": lambda _, services: _jwt_verified_once(services),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    profiling.add_arguments(parser)
    parser.add_argument("--log-level", default="INFO", help="the app's (make up's: INFO)")
    parser.add_argument(
        "--without",
        default="",
        help=f"parts of the app left out, to price them: {', '.join(WITHOUT)} (comma-separated)",
    )
    args = parser.parse_args()
    without = [part for part in args.without.split(",") if part]
    unknown = set(without) - WITHOUT.keys()
    if unknown:
        parser.error(f"--without: no part named {', '.join(sorted(unknown))}")
    extra = ["--log-level", args.log_level, "--without", args.without]
    if profiling.counted_instead(args, "bench.api_profile", extra):
        return
    instructions = Instructions()
    settings = dataclasses.replace(common.settings, log_level=args.log_level)
    services = bootstrap(common.settings)
    app = create_app(settings, services=services)
    app.add_url_rule(BARE % "<token>", view_func=_bare, methods=["POST"])
    # The app's log, formatted as the stack's, to nowhere: its cost stays in the figure.
    devnull = open(os.devnull, "w")  # noqa: SIM115  (open for the whole run)
    configure_logging(args.log_level, settings.log_json, stream=devnull)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the sandbox's request lines
    for part in without:
        WITHOUT[part](app, services)
    client = app.test_client()

    def post(path: str, **kwargs: Any) -> None:
        answer = client.post(path, **kwargs)
        if answer.status_code not in (200, 202):
            raise RuntimeError(f"{path}: {answer.status_code} {answer.get_data(as_text=True)}")

    def webhooks(payments: list[Payment]) -> None:
        for payment in payments:
            post(WEBHOOK, data=payment.webhook_body, headers=payment.webhook_headers)

    def confirms(payments: list[Payment]) -> None:
        for payment in payments:
            post(
                CONFIRM % payment.id,
                json={},
                headers={"Authorization": f"Bearer {payment.token}"},
            )

    def bare(payments: list[Payment]) -> None:
        for payment in payments:
            post(BARE % payment.id, json={"provider_payment_id": None})

    def per_payment(work: Callable[[list[Payment]], None], payments: list[Payment]) -> float:
        started = time.thread_time()
        work(payments)
        return 1000 * (time.thread_time() - started) / len(payments)

    try:
        common.fresh_database()
        common.flush_bench_redis()
        course_id = seed_realistic(args.warmup + 2 * args.payments)
        warm = paid(services, course_id, args.warmup)
        webhooks(warm)
        confirms(warm)
        bare(warm)

        profiled = paid(services, course_id, args.payments)
        profile = cProfile.Profile(time.thread_time)
        if not args.no_cprofile:
            profile.enable()
        webhooks(profiled)
        confirms(profiled)
        profile.disable()

        fresh = paid(services, course_id, args.payments)
        figures: dict[str, float] = {}
        for label, work in (("webhook", webhooks), ("confirm", confirms), ("bare", bare)):
            with instructions.count() as counted:
                took = per_payment(work, fresh)
            figures[label] = counted[0] / len(fresh) / 1e6 if instructions.active else took
        confirming = common.scalar("SELECT count(*) FROM payments WHERE status = 'confirming'")
    finally:
        devnull.close()
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)

    print(common.machine_note())
    print(
        f"{len(warm) + len(profiled) + len(fresh)} payments confirmed through the API "
        f"({confirming} confirming), log level {args.log_level}"
        + (f", without {', '.join(without)}" if without else "")
    )
    unit = "millions of this thread's instructions" if instructions.active else "ms of CPU"
    api = figures["webhook"] + figures["confirm"]
    rows = [
        ["the webhook (payment_intent.succeeded: confirms)", f"{figures['webhook']:.2f}"],
        ["the confirm (already confirming: answers the same)", f"{figures['confirm']:.2f}"],
        ["the API's two requests", f"{api:.2f}"],
        ["reference: the bare JSON endpoint, twice", f"{2 * figures['bare']:.2f}"],
        ["ratio to the reference", f"{api / (2 * figures['bare']):.2f}x"],
    ]
    print(common.table(["figure", f"{unit} per payment"], rows))
    profiling.print_profile(profile, args, "the webhook and the confirm")


if __name__ == "__main__":
    main()
