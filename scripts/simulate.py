"""Drive the running stack over HTTP and watch it work (a developer's tool, not part of
the service: `requests` is a dev dependency).

    python -m scripts.simulate --payments 200 [--api-url http://127.0.0.1:8000]

It reads the same settings as the stack (ADMIN_TOKEN, STRIPE_API_BASE, ...) and pays each
payment at the provider (the sandbox under `make up`) as a student's app would.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import click
import requests

TRAINER_CAPACITY = 50
SLOTS = [f"{6 + i // 4:02d}:{15 * (i % 4):02d}" for i in range(64)]  # 06:00 … 21:45


class Stack:
    def __init__(self, base_url: str, admin_token: str) -> None:
        self.base = base_url.rstrip("/") + "/api/v1"
        self.http = requests.Session()
        self.admin = {"Authorization": f"Bearer {admin_token}"}

    # Every call carries the admin token: an operator's tool is not rate-limited.
    def post(self, path: str, body: dict, *, admin: bool = False) -> dict:
        response = self.http.post(self.base + path, json=body, headers=self.admin, timeout=30)
        if response.status_code >= 300:
            raise click.ClickException(f"POST {path}: {response.status_code} {response.text}")
        return response.json()

    def get(self, path: str) -> dict:
        response = self.http.get(self.base + path, headers=self.admin, timeout=30)
        if response.status_code != 200:
            raise click.ClickException(f"GET {path}: {response.status_code} {response.text}")
        return response.json()


def run_simulation(
    base_url: str,
    admin_token: str,
    payments: int,
    timeout: float,
    pay: Callable[[str], object],
) -> dict:
    stack = Stack(base_url, admin_token)
    run = uuid.uuid4().hex[:8]
    course = stack.post("/courses", {"title": f"Simulation {run}"}, admin=True)
    # One spare trainer: greedy least-loaded choice needs slack to place everyone.
    for n in range(math.ceil(payments / TRAINER_CAPACITY) + 1):
        stack.post(
            "/trainers",
            {
                "name": f"Sim trainer {n}",
                "email": f"sim-{run}-t{n}@tutorflow.example",
                "max_students": TRAINER_CAPACITY,
                "course_ids": [course["id"]],
            },
            admin=True,
        )

    def create_and_confirm(n: int) -> str:
        student = stack.post(
            "/students",
            {
                "name": f"Sim student {n}",
                "email": f"sim-{run}-s{n}@tutorflow.example",
                "timezone": "Europe/Berlin",
            },
            admin=True,
        )
        payment = stack.post(
            "/payments",
            {
                "student_id": student["id"],
                "course_id": course["id"],
                "tier": 10,
                "time_slot": SLOTS[n % len(SLOTS)],
            },
        )
        # The student pays with the provider's SDK (the sandbox's test card), then says so.
        pay(payment["provider_payment_id"])
        stack.post(f"/payments/{payment['id']}/confirm", {})
        return payment["id"]

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        payment_ids = list(pool.map(create_and_confirm, range(payments)))
    confirmed_in = time.monotonic() - started

    finished = ("scheduled", "needs_attention")
    states: dict[str, str] = {}
    with click.progressbar(length=payments, label="fulfilment") as bar:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = [
                p for p in payment_ids if states.get(p) not in ("scheduled", "needs_attention")
            ]
            if not pending:
                break
            with ThreadPoolExecutor(8) as pool:
                for payment_id, detail in zip(
                    pending, pool.map(lambda p: stack.get(f"/payments/{p}"), pending), strict=True
                ):
                    state = detail["fulfilment"]["state"]
                    if state in finished:
                        bar.update(1)
                    states[payment_id] = state
            time.sleep(0.5)
    elapsed = time.monotonic() - started
    fulfilled = sum(1 for s in states.values() if s == "scheduled")
    return {
        "payments": payments,
        "fulfilled": fulfilled,
        "dead_lettered": sum(1 for s in states.values() if s == "needs_attention"),
        "unfinished": payments
        - len([s for s in states.values() if s in ("scheduled", "needs_attention")]),
        "confirm_seconds": confirmed_in,
        "seconds": elapsed,
        "throughput": fulfilled / elapsed if elapsed else 0.0,
    }


@click.command("simulate")
@click.option("--payments", default=200, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--api-url", default="http://127.0.0.1:8000", show_default=True)
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait.")
def simulate_command(payments: int, api_url: str, timeout: float) -> None:
    """Create and confirm N payments against the running stack; watch them fulfil."""
    from core.config import get_settings
    from core.provider import PaymentProvider

    settings = get_settings()
    client = PaymentProvider.for_settings(settings).client

    def pay(intent_id: str) -> object:
        return client.v1.payment_intents.confirm(
            intent_id, params={"payment_method": "pm_card_visa"}
        )

    result = run_simulation(api_url, settings.admin_token, payments, timeout, pay)
    click.echo("")
    rows = [
        ("payments", result["payments"]),
        ("fulfilled (7 sessions)", result["fulfilled"]),
        ("dead-lettered", result["dead_lettered"]),
        ("unfinished", result["unfinished"]),
        ("created + confirmed in", f"{result['confirm_seconds']:.1f} s"),
        ("all done in", f"{result['seconds']:.1f} s"),
        ("throughput", f"{result['throughput']:.1f} payments/s"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")
    if result["unfinished"] or result["dead_lettered"]:
        raise SystemExit(1)


if __name__ == "__main__":
    simulate_command()
