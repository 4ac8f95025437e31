"""End-to-end latency at a fixed offered load: confirm over HTTP → sessions visible.

Open loop (default 20 payments/s for 30 s): each payment is confirmed with
POST /api/v1/payments/{id}/confirm at its scheduled instant, against gunicorn (the real
app, with the bench reference routes beside it) and a real worker (-c 2). Its latency
runs from sending the confirm to the first GET that shows its sessions:
GET /api/v1/students/{id}/home until "upcoming_sessions" is not empty (every bench
student has this one payment), or, where that endpoint does not exist,
GET /api/v1/payments/{id} until fulfilment.sessions_scheduled reaches the window.
Like the student page, the client GETs again at once after each live event of the
student (Redis pub/sub), and every --poll-ms as a safety net; the figure is then precise
(one GET after the event that made the sessions visible) without the polling itself
loading the 2-core machine: a 20 ms poll per payment in flight overloads it at 20/s,
and once latency grows, every poll adds load (in flight x 1/poll GETs per second).

Reference in the same run, same rate, gunicorn and worker: POST /bench/ref/chain/{token}
publishes a bare 4-task no-op chain; its latency runs to the chain's done event.

    python -m bench.e2e_latency [--rate 20] [--seconds 30] [--poll-ms 1000]
"""

from __future__ import annotations

import argparse
import http.client
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import bench.common as common
from bench.common import settings
from bench.noop_tasks import DONE_CHANNEL
from harness.brokers import queue_length

HOME = "/api/v1/students/{student_id}/home"


@dataclass
class Track:
    """One payment (or reference token) on its way through."""

    key: str  # payment id, or the reference token
    student_id: int = 0
    token: str | None = None  # the student's bearer token
    target: float = 0.0  # scheduled send instant
    sent: float = 0.0
    answered: float | None = None
    status: int = 0
    visible: float | None = None
    sessions_event: float | None = None
    done_event: float | None = None  # STUDENT_VIEWS_REFRESHED, or the no-op chain's end
    polls: int = 0
    errors: int = 0
    wake: threading.Event = field(default_factory=threading.Event)


class Client:
    """Keep-alive connections, one per thread; a connection the server closed is reopened."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def request(
        self, method: str, path: str, body: object | None = None, token: str | None = None
    ) -> tuple[int, Any]:
        for attempt in range(2):
            connection = getattr(self.local, "connection", None)
            if connection is None:
                connection = http.client.HTTPConnection(common.HOST, self.port, timeout=10)
                self.local.connection = connection
            try:
                return common.send(connection, method, path, body, token=token)
            except (OSError, http.client.HTTPException):
                connection.close()
                self.local.connection = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def open_loop(tracks: list[Track], rate: float, job: Callable[[Track], None], threads: int) -> int:
    """Start job(track) at t0 + i / rate, whatever the previous ones are doing.

    Returns the deepest backlog of the pipeline queue seen meanwhile: a queue that grows
    means the worker cannot keep up with the offered load.
    """
    stop = threading.Event()
    depths = [0]

    def sample_queue() -> None:
        while not stop.wait(0.25):
            depths.append(queue_length(settings.broker_url, *common.CHAIN_QUEUES))

    sampler = threading.Thread(target=sample_queue, daemon=True)
    sampler.start()
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            t0 = time.time() + 0.2
            for i, track in enumerate(tracks):
                track.target = t0 + i / rate
                delay = track.target - time.time()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(job, track)
    finally:
        stop.set()
        sampler.join(timeout=5)
    return max(depths)


def payment_job(
    client: Client, visible: Callable[[Track], bool], poll: float, timeout: float
) -> Callable[[Track], None]:
    def job(track: Track) -> None:
        track.sent = time.time()
        try:
            path = f"/api/v1/payments/{track.key}/confirm"
            track.status, _ = client.request("POST", path, {}, token=track.token)
        except (OSError, http.client.HTTPException):
            track.errors += 1
            return
        track.answered = time.time()
        deadline = track.sent + timeout
        while time.time() < deadline:
            track.wake.clear()  # an event during the GET below makes the wait return at once
            track.polls += 1
            try:
                if visible(track):
                    track.visible = time.time()
                    return
            except (OSError, http.client.HTTPException):
                track.errors += 1
            track.wake.wait(max(0.0, min(poll, deadline - time.time())))

    return job


def reference_job(client: Client, timeout: float) -> Callable[[Track], None]:
    def job(track: Track) -> None:
        track.sent = time.time()
        try:
            track.status, _ = client.request("POST", f"/bench/ref/chain/{track.key}", {})
        except (OSError, http.client.HTTPException):
            track.errors += 1
            return
        track.answered = time.time()
        deadline = track.sent + timeout
        while track.done_event is None and time.time() < deadline:
            track.wake.wait(max(0.0, min(0.5, deadline - time.time())))
            track.wake.clear()

    return job


def latencies(tracks: list[Track], attribute: str) -> list[float]:
    return [getattr(t, attribute) - t.sent for t in tracks if getattr(t, attribute) is not None]


def row(label: str, tracks: list[Track], attribute: str) -> list[object]:
    values = latencies(tracks, attribute)
    sent = sorted(t.sent for t in tracks if t.sent)
    rate = (len(sent) - 1) / (sent[-1] - sent[0]) if len(sent) > 1 else float("nan")
    s = common.summary(values)
    return [
        label,
        f"{len(values)}/{len(tracks)}",
        f"{rate:.1f}",
        common.ms(s["p50"]),
        common.ms(s["p95"]),
        common.ms(s["p99"]),
        common.ms(max(values)) if values else "-",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=20.0, help="payments per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--poll-ms", type=float, default=1000.0, help="GET period per payment, besides events"
    )
    parser.add_argument("--timeout", type=float, default=20.0, help="per payment, seconds")
    args = parser.parse_args()
    count = max(1, int(args.rate * args.seconds))
    warmup = max(5, int(args.rate * 2))
    poll = args.poll_ms / 1000
    # One thread per payment in flight, up to rate x timeout: they mostly wait (cheap),
    # and fewer would hold back the sends of an open loop once latency grows.
    threads = int(min(512, max(32, args.rate * args.timeout)))

    common.fresh_database()
    common.flush_bench_redis()
    course_id = common.seed_catalogue(trainers=common.trainers_for(count + warmup))
    seeded = common.seed_pending_payments(course_id, count + warmup)
    common.pay_at_the_provider([p for p, _ in seeded])  # as the students' apps would
    tracks = [Track(str(p), student_id=s, token=common.student_token(s)) for p, s in seeded]
    warm, real = tracks[:warmup], tracks[warmup:]
    reference = [Track(uuid.uuid4().hex) for _ in range(count)]
    by_key = {t.key: t for t in tracks + reference}

    def on_event(at: float, channel: str, data: dict) -> None:
        track = by_key.get(data.get("payment_id") or data.get("token") or "")
        if track is None:
            return
        kind = data.get("type")
        if kind == "SESSIONS_GENERATED" and track.sessions_event is None:
            track.sessions_event = at
        elif (kind == "STUDENT_VIEWS_REFRESHED" or channel == DONE_CHANNEL) and (
            track.done_event is None
        ):
            track.done_event = at
        track.wake.set()

    print(common.machine_note())
    try:
        with (
            common.LiveEvents(
                patterns=("student:*:events",), channels=(DONE_CHANNEL,), on_event=on_event
            ),
            common.gunicorn("bench.reference_wsgi:app") as server,
            common.celery_worker(concurrency=2),
        ):
            client = Client(server.port)
            _, spec = client.request("GET", "/openapi.json")
            if HOME in (spec or {}).get("paths", {}):  # the lead's home screen, if built yet
                how = "GET /students/{id}/home shows upcoming sessions"

                def visible(track: Track) -> bool:
                    status, body = client.request(
                        "GET", HOME.format(student_id=track.student_id), token=track.token
                    )
                    return status == 200 and bool((body or {}).get("upcoming_sessions"))
            else:
                how = f"GET /payments/{{id}} shows {settings.session_window} sessions"

                def visible(track: Track) -> bool:
                    status, body = client.request(
                        "GET", f"/api/v1/payments/{track.key}", token=track.token
                    )
                    scheduled = (body or {}).get("fulfilment", {}).get("sessions_scheduled", 0)
                    return status == 200 and scheduled >= settings.session_window

            job = payment_job(client, visible, poll, args.timeout)
            open_loop(warm, args.rate, job, threads)  # warms pools; not reported
            real_depth = open_loop(real, args.rate, job, threads)
            reference_job_ = reference_job(client, args.timeout)
            reference_depth = open_loop(reference, args.rate, reference_job_, threads)
            letters = common.scalar("SELECT count(*) FROM dead_letters")
    finally:
        common.flush_bench_redis()

    print()
    print(
        f"open loop: {args.rate:g}/s for {args.seconds:g} s ({count} payments), then the "
        f"same for the reference; worker -c 2; visible = {how}, polled every "
        f"{args.poll_ms:g} ms and after each live event"
    )
    print()
    print(
        common.table(
            [
                "measure (from sending the request)",
                "seen",
                "sent/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "max ms",
            ],
            [
                row("confirm → sessions visible over HTTP", real, "visible"),
                row("confirm → SESSIONS_GENERATED event", real, "sessions_event"),
                row("confirm → STUDENT_VIEWS_REFRESHED event", real, "done_event"),
                row("confirm → 202 answered", real, "answered"),
                row("reference: POST → no-op 4-task chain done event", reference, "done_event"),
                row("reference: POST → answered", reference, "answered"),
            ],
        )
    )
    visible_p95 = common.percentile(latencies(real, "visible"), 95)
    done_p95 = common.percentile(latencies(real, "done_event"), 95)
    ref_p95 = common.percentile(latencies(reference, "done_event"), 95)
    print()
    print(
        common.table(
            ["figure", "value", "target", ""],
            [
                [
                    "p95 confirm → visible",
                    common.ms(visible_p95) + " ms",
                    "≤ 150 ms",
                    "met" if visible_p95 <= 0.150 else "NOT met",
                ],
                ["p95 chain end: real / no-op reference", f"{done_p95 / ref_p95:.2f}x", "-", "-"],
            ],
        )
    )
    late = max((t.sent - t.target for t in real if t.sent), default=0.0)
    statuses = sorted({t.status for t in real})
    polls = sum(t.polls for t in real) / max(1, len(real))
    errors = sum(t.errors for t in real + reference)
    print(
        f"\nconfirm statuses {statuses}; {polls:.1f} GETs per payment; "
        f"latest send {late * 1000:.1f} ms behind schedule; {errors} connection errors; "
        f"{letters} dead letters; deepest pipeline queue {real_depth} messages "
        f"(reference run: {reference_depth})"
    )
    if late > 0.1:
        print(
            "WARNING: the load generator fell behind its schedule: the offered load was "
            "lower than asked (see sent/s)"
        )


if __name__ == "__main__":
    main()
