"""Drive the running stack over HTTP as its clients would, and say truthfully how it went
(a developer's tool, not part of the service: `requests` is a dev dependency).

    make simulate [PAYMENTS=50]          # with `make up` running in another terminal
    python -m scripts.simulate --payments 200 [--api-url http://127.0.0.1:8000]
                                         [--seed 1] [--timeout 300]

It reads the same settings as `make up` (core.config.get_settings: the admin token, the
provider's key and address, which default to the local sandbox), so a second terminal
needs no exports. Every call carries the admin token, as an operator's tool: the public
rate limit (per client address) would otherwise throttle hundreds of students coming
from one address.

1. It checks that the API answers, takes the admin token, and that the provider answers
   the key, and says which one is missing before it writes anything.
2. It builds a catalogue that can serve its load: one course of 60-minute sessions, the
   students spread over ZONES, and in each zone one trainer (default hours: Monday to
   Friday, 08:00 to 20:00 local) per STUDENTS_PER_TRAINER of the zone's students, plus
   a spare. A trainer's day has 45 quarter-hour starts for a 60-minute session and a
   student keeps the trainer's other students off 7 of them (within an hour either
   side), so a trainer whose every start is taken has at least 7 students, however the
   times fell: 6 per trainer leaves room.
3. Each student (8 at a time) is created, reads the course's availability for its zone
   and a tier (both seeded), chooses one of the offered times at random (seeded) and
   checks out. A 409 slot_unavailable (another student took the last place meanwhile)
   makes it try a time from `details.nearest`, then read the availability again; at
   most MAX_CHECKOUTS checkouts. Then it pays at the provider with the test card and
   says "I paid".
4. It waits, at most --timeout seconds, for each payment's outcome (GET
   /api/v1/payments/{id}, polled every half second): **dead-lettered** if the
   dead-letter table holds an open letter for it (the detail's `fulfilment.dead_letters`
   are the table's rows for the payment, whatever their reason), else **refunded** or
   **failed** by the payment's status, else **fulfilled** once its sessions are
   scheduled; anything else when the time is up is **unfinished**, with its state.
   Once all are settled (or the time is up) it reads every payment again, so the report
   is what the database says at the end.

Something is wrong, and the exit status is 1, when any student could not buy (no time
offered, or every checkout refused), or any payment ended dead-lettered, refunded,
failed or unfinished. Refunds count: the catalogue is built to serve the load and each
checkout holds its trainer's place until the payment is verified, so a refund here means
a hold or an allocation went wrong, not that the demo was too big. The exit status is 0
only when every payment was fulfilled. A stack that cannot be reached stops it at once
with a message (status 1 too).
"""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import click
import requests

# Students' (and their trainers') zones: a half-hour offset shows the 15-minute grid.
ZONES = ("Europe/Berlin", "America/New_York", "Asia/Kolkata")
SESSION_MINUTES = 60
STUDENTS_PER_TRAINER = 6  # see the docstring: at least 7 fit, whatever the times
MAX_STUDENTS = 12  # a 12-hour day of 60-minute sessions: time, not this, is the limit
TIERS = (10, 20, 30)
MAX_CHECKOUTS = 8  # per student: a refused time is chosen again, this many times at most
THREADS = 8
POLL_SECONDS = 0.5
PROVIDER_WAITS = 3  # checkouts answered 503 (provider unreachable) waited out, at most


class StackError(click.ClickException):
    """The stack answered what no client could go on from (exit status 1)."""


class Api:
    """The API's /api/v1, one HTTP session per thread, every call with the admin token."""

    def __init__(self, base_url: str, admin_token: str) -> None:
        self.root = base_url.rstrip("/")
        self.base = self.root + "/api/v1"
        self.headers = {"Authorization": f"Bearer {admin_token}"}
        self.local = threading.local()

    @property
    def http(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
        return self.local.session

    def call(
        self, method: str, path: str, *, body: dict | None = None, params: dict | None = None
    ) -> requests.Response:
        try:
            return self.http.request(
                method, self.base + path, json=body, params=params, headers=self.headers, timeout=30
            )
        except requests.ConnectionError as error:
            raise StackError(f"no API at {self.root} ({error.__class__.__name__})") from error

    def expect(self, response: requests.Response, *statuses: int) -> dict[str, Any]:
        if response.status_code not in statuses:
            request = response.request
            raise StackError(
                f"{request.method} {request.path_url}: {response.status_code} {response.text[:500]}"
            )
        body: dict[str, Any] = response.json()
        return body

    def post(self, path: str, body: dict) -> dict[str, Any]:
        return self.expect(self.call("POST", path, body=body), 200, 201, 202)

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        return self.expect(self.call("GET", path, params=params or None), 200)

    def check(self) -> None:
        """The API answers and takes the admin token."""
        try:
            alive = self.http.get(self.root + "/healthz", timeout=5)
        except requests.ConnectionError:
            raise StackError(
                f"no API at {self.root}: is `make up` running (or give --api-url)?"
            ) from None
        if alive.status_code != 200:
            raise StackError(f"{self.root}/healthz answered {alive.status_code}")
        if self.call("GET", "/admin/dead-letters", params={"per_page": 1}).status_code == 401:
            raise StackError("the API refused the admin token: ADMIN_TOKEN differs from the API's")


@dataclass
class Catalogue:
    course_id: int
    trainers: dict[str, int]  # per zone


@dataclass
class Sale:
    """A student who checked out, paid and said so."""

    payment_id: str
    zone: str
    tier: int
    time_slot: str
    checkouts: int


@dataclass
class NotSold:
    zone: str
    tier: int
    reason: str


@dataclass
class Outcome:
    kind: str  # fulfilled, dead_lettered, refunded, failed, unfinished
    state: str  # the fulfilment state the API reported
    sessions: int = 0
    detail: str = ""  # a dead letter's task and reason, a refund's event


@dataclass
class Report:
    payments: int
    catalogue: Catalogue
    timeout: float
    sales: list[Sale] = field(default_factory=list)
    not_sold: list[NotSold] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    sold_seconds: float = 0.0
    seconds: float = 0.0

    def count(self, kind: str) -> int:
        return sum(1 for o in self.outcomes.values() if o.kind == kind)

    def details(self, kind: str) -> Counter[str]:
        return Counter(o.detail or o.state for o in self.outcomes.values() if o.kind == kind)

    def problems(self) -> list[str]:
        """What went wrong; empty when every payment was fulfilled."""
        found = []
        if self.not_sold:
            reasons = Counter(n.reason for n in self.not_sold)
            found.append(f"{len(self.not_sold)} not sold: {_counted(reasons)}")
        for kind in ("dead_lettered", "refunded", "failed", "unfinished"):
            if self.count(kind):
                found.append(
                    f"{self.count(kind)} {kind.replace('_', '-')}: {_counted(self.details(kind))}"
                )
        return found

    @property
    def exit_status(self) -> int:
        return 1 if self.problems() else 0

    def rows(self) -> list[tuple[str, object]]:
        fulfilled = self.count("fulfilled")
        rechosen = sum(1 for s in self.sales if s.checkouts > 1)
        times = {(s.zone, s.time_slot) for s in self.sales}
        trainers = sum(self.catalogue.trainers.values())
        return [
            ("students", self.payments),
            (
                "catalogue",
                f"course {self.catalogue.course_id}, {trainers} trainers in {', '.join(ZONES)}",
            ),
            ("sold (paid, confirmed)", len(self.sales)),
            ("  times chosen", f"{len(times)} distinct (zone, local time)"),
            ("  chosen again after 409", rechosen),
            ("not sold", len(self.not_sold)),
            (
                "fulfilled",
                f"{fulfilled} ({sum(o.sessions for o in self.outcomes.values())} sessions)",
            ),
            ("refunded", self.count("refunded")),
            ("failed", self.count("failed")),
            ("dead-lettered", self.count("dead_lettered")),
            (f"unfinished after {self.timeout:g} s", self.count("unfinished")),
            ("checked out + confirmed in", f"{self.sold_seconds:.1f} s"),
            ("all done in", f"{self.seconds:.1f} s"),
            ("throughput", f"{fulfilled / self.seconds if self.seconds else 0.0:.1f} payments/s"),
        ]


def _counted(counter: Counter[str]) -> str:
    return "; ".join(f"{reason}: {n}" for reason, n in counter.most_common(5))


def build_catalogue(api: Api, run: str, payments: int) -> Catalogue:
    course = api.post(
        "/courses", {"title": f"Simulation {run}", "session_minutes": SESSION_MINUTES}
    )
    trainers = {}
    for z, zone in enumerate(ZONES):
        students = len(range(z, payments, len(ZONES)))
        count = math.ceil(students / STUDENTS_PER_TRAINER) + 1 if students else 0
        for n in range(count):
            api.post(
                "/trainers",
                {
                    "name": f"Sim trainer {zone} {n}",
                    "email": f"sim-{run}-z{z}-t{n}@tutorflow.example",
                    "max_students": MAX_STUDENTS,
                    "course_ids": [course["id"]],
                    "timezone": zone,
                },
            )
        trainers[zone] = count
    return Catalogue(course["id"], trainers)


def choose_and_check_out(
    api: Api, course_id: int, student_id: int, zone: str, tier: int, chooser: random.Random
) -> tuple[dict[str, Any] | None, int, str]:
    """(the checkout, checkouts tried, why not): a random offered time, then the nearest
    ones the refusal names, then the availability again; MAX_CHECKOUTS at most."""
    candidates: list[str] = []
    reason = "no time offered"
    tried = 0
    provider_waits = 0
    while tried < MAX_CHECKOUTS:
        if not candidates:
            offered = api.get(f"/courses/{course_id}/availability", timezone=zone, tier=tier)
            if not offered["times"]:
                return None, tried, "no time offered"
            candidates = [chooser.choice(offered["times"])["time_slot"]]
        slot = candidates.pop(0)
        tried += 1
        response = api.call(
            "POST",
            "/payments",
            body={
                "student_id": student_id,
                "course_id": course_id,
                "tier": tier,
                "time_slot": slot,
            },
        )
        if response.status_code == 201:
            return response.json(), tried, ""
        try:
            error = response.json().get("error", {})
        except ValueError:  # not the API's JSON (a proxy's page): said below
            error = {}
        if response.status_code == 409 and error.get("code") == "slot_unavailable":
            nearest = list(error.get("details", {}).get("nearest", []))
            chooser.shuffle(nearest)
            candidates = nearest
            reason = "every time chosen was taken meanwhile"
        elif response.status_code == 503 and provider_waits < PROVIDER_WAITS:
            provider_waits += 1
            tried -= 1  # nothing was written: not a refused time
            time.sleep(min(float(response.headers.get("Retry-After", 5)), 5.0))
        else:
            api.expect(response, 201)  # raises, saying what the API answered
    return None, tried, reason


def classify(detail: dict[str, Any]) -> Outcome | None:
    """The payment's outcome, or None while it is under way."""
    fulfilment = detail["fulfilment"]
    state = fulfilment["state"]
    letters = [d for d in fulfilment["dead_letters"] if d["status"] == "open"]
    if letters:
        reasons = ", ".join(f"{d['task_name'].rsplit('.', 1)[-1]} ({d['reason']})" for d in letters)
        return Outcome("dead_lettered", state, fulfilment["sessions_scheduled"], reasons)
    if detail["status"] == "refunded":
        events = {e["type"] for e in detail["timeline"]}
        why = "ALLOCATION_REFUSED" if "ALLOCATION_REFUSED" in events else "refunded"
        return Outcome("refunded", state, 0, why)
    if detail["status"] == "failed":
        return Outcome("failed", state, 0, detail.get("failure_reason") or "failed")
    if state == "scheduled":
        return Outcome("fulfilled", state, fulfilment["sessions_scheduled"])
    return None


def _in_parallel(work: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """`work` on each item, THREADS at a time, in order; the first error stops the rest
    (those not started yet are cancelled) and is raised."""
    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(work, item) for item in items]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return [future.result() for future in futures]


def run_simulation(
    api: Api,
    payments: int,
    timeout: float,
    pay: Callable[[str], object],
    seed: int = 1,
) -> Report:
    run = uuid.uuid4().hex[:8]
    catalogue = build_catalogue(api, run, payments)
    report = Report(payments, catalogue, timeout)

    def sell(n: int) -> Sale | NotSold:
        chooser = random.Random(seed * 1_000_003 + n)  # the same choices whatever the threads
        zone = ZONES[n % len(ZONES)]
        tier = chooser.choice(TIERS)
        student = api.post(
            "/students",
            {
                "name": f"Sim student {n}",
                "email": f"sim-{run}-s{n}@tutorflow.example",
                "timezone": zone,
            },
        )
        checkout, tried, reason = choose_and_check_out(
            api, catalogue.course_id, student["id"], zone, tier, chooser
        )
        if checkout is None:
            return NotSold(zone, tier, reason)
        # The student pays with the provider's SDK (the test card), then says so.
        pay(checkout["provider_payment_id"])
        api.post(f"/payments/{checkout['id']}/confirm", {})
        return Sale(checkout["id"], zone, tier, checkout["time_slot"], tried)

    started = time.monotonic()
    for result in _in_parallel(sell, range(payments)):
        (report.sales if isinstance(result, Sale) else report.not_sold).append(result)
    report.sold_seconds = time.monotonic() - started

    def read(sale: Sale) -> dict[str, Any]:
        return api.get(f"/payments/{sale.payment_id}")

    pending = list(report.sales)
    deadline = time.monotonic() + timeout
    with click.progressbar(length=len(pending), label="outcomes") as bar:
        while pending and time.monotonic() < deadline:
            still = []
            for sale, detail in zip(pending, _in_parallel(read, pending), strict=True):
                if classify(detail) is None:
                    still.append(sale)
                else:
                    bar.update(1)
            pending = still
            if pending:
                time.sleep(POLL_SECONDS)
    # What the database says now, for every payment: one more read each.
    for sale, detail in zip(report.sales, _in_parallel(read, report.sales), strict=True):
        outcome = classify(detail)
        state = detail["fulfilment"]["state"]
        report.outcomes[sale.payment_id] = outcome or Outcome("unfinished", state, 0, state)
    report.seconds = time.monotonic() - started
    return report


def provider_payer(settings: Any) -> Callable[[str], object]:
    """Pays a PaymentIntent as the student's app does with the provider's SDK (the test
    card), once the provider is known to answer this key."""
    import stripe

    from bootstrap import bootstrap

    client = bootstrap(settings).provider.client
    where = settings.stripe_api_base or "https://api.stripe.com"
    try:
        client.v1.payment_intents.retrieve("pi_simulate_preflight")
    except stripe.InvalidRequestError:
        pass  # 404: it answers, and took the key
    except stripe.AuthenticationError:
        raise StackError(f"the provider at {where} refused STRIPE_SECRET_KEY") from None
    except stripe.StripeError as error:
        raise StackError(
            f"the provider at {where} did not answer ({error.__class__.__name__}): "
            "is `make up` (its sandbox) running?"
        ) from None

    def pay(intent_id: str) -> object:
        return client.v1.payment_intents.confirm(
            intent_id, params={"payment_method": "pm_card_visa"}
        )

    return pay


@click.command("simulate")
@click.option("--payments", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--api-url", default="http://127.0.0.1:8000", show_default=True)
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for outcomes.")
@click.option("--seed", default=1, show_default=True, help="Students' zones, tiers and times.")
def simulate_command(payments: int, api_url: str, timeout: float, seed: int) -> None:
    """Students buy a course against the running stack; report how each payment ended.
    Exit status 0 only if every one was fulfilled (see the module's docstring)."""
    from core.config import get_settings

    settings = get_settings()
    api = Api(api_url, settings.admin_token)
    api.check()
    pay = provider_payer(settings)
    report = run_simulation(api, payments, timeout, pay, seed=seed)
    click.echo("")
    rows = report.rows()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")
    problems = report.problems()
    for problem in problems:
        click.echo(f"wrong: {problem}", err=True)
    if not problems:
        click.echo("every payment fulfilled")
    raise SystemExit(report.exit_status)


if __name__ == "__main__":
    simulate_command()
