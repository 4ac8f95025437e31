"""The knee: open-loop offered load stepping up until the pipeline cannot keep up.

Each step offers RATE payments/s for --seconds (new students, distinct slots, enough
trainers) against gunicorn and a real worker (-c 2), everything on this machine. A
client confirms its payment with POST /api/v1/payments/{id}/confirm at its scheduled
instant, then reads the student's home screen as the app does: at once after each live
event and every --poll-ms otherwise, until the sessions show. A share of extra
home-screen reads (--reads-per-payment) stands for students who open the app meanwhile.

Per step it prints confirm p50/p99, confirm → sessions visible p50/p95/p99, confirms
answered 5xx or not at all, the deepest pipeline queue, how long after the step's last
confirm its last payment showed its sessions (the backlog drained), and where the CPU
went (API, workers, PostgreSQL, Redis, this load generator, in % of one core). The knee
is the highest rate with confirm p99 ≤ 50 ms and confirm → visible p95 ≤ 150 ms; one
more step at 1.5 times the knee shows how it degrades past it. Beside it, the same
steps for a bare 5-task no-op chain published by the same gunicorn (its POST → done
event): this machine's ceiling. With --provider-ms L every provider call waits L ms at
the sandbox, as the real provider's do, and the visible bound is 150 + L ms.

    python -m bench.knee [--rates 10,15,20,25,30,35] [--seconds 30] [--poll-ms 500]
                         [--concurrency 2] [--provider-ms 0]
"""

from __future__ import annotations

import argparse
import random
import uuid

import bench.common as common
from bench.e2e_latency import Client, Track, latencies, open_loop, payment_job, reference_job
from bench.noop_tasks import DONE_CHANNEL
from harness.brokers import queue_length

HOME = "/api/v1/students/{student_id}/home"
CONFIRM_P99 = 0.050
# Confirm → visible, beyond what the provider takes: with --provider-ms L the sessions
# cannot show before the provider answered, so the bound is 150 ms + L.
VISIBLE_P95 = 0.150


def _step_row(
    rate: float | str, tracks: list[Track], depth: int, drained: str, cpu: dict[str, float]
) -> list:
    confirm = common.summary(latencies(tracks, "answered"))
    visible = common.summary(latencies(tracks, "visible"))
    seen = len(latencies(tracks, "visible"))
    failed = sum(1 for t in tracks if t.status >= 500) + sum(t.errors for t in tracks)
    return [
        rate if isinstance(rate, str) else f"{rate:g}",
        f"{seen}/{len(tracks)}",
        failed,
        common.ms(confirm["p50"]),
        common.ms(confirm["p99"]),
        common.ms(visible["p50"]),
        common.ms(visible["p95"]),
        common.ms(visible["p99"]),
        depth,
        drained,
        " / ".join(f"{cpu[k]:.0f}" for k in cpu),
    ]


def _drained(tracks: list[Track]) -> str:
    """Seconds from the step's last confirm until its last payment's sessions showed."""
    shown = [t.visible for t in tracks if t.visible is not None]
    if len(shown) < len(tracks):
        return "not all"
    return f"{max(shown) - max(t.sent for t in tracks):.1f}"


def _wait_for_an_empty_queue() -> None:
    common.wait_for(
        lambda: queue_length(common.settings.broker_url, *common.CHAIN_QUEUES) == 0, 60, 0.5
    )


def _healthy(tracks: list[Track], provider_seconds: float = 0.0) -> bool:
    answered = latencies(tracks, "answered")
    visible = latencies(tracks, "visible")
    return (
        len(visible) == len(tracks)
        and common.percentile(answered, 99) <= CONFIRM_P99
        and common.percentile(visible, 95) <= VISIBLE_P95 + provider_seconds
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="10,15,20,25,30,35", help="payments/s per step")
    parser.add_argument("--seconds", type=float, default=30.0, help="per step")
    parser.add_argument("--poll-ms", type=float, default=500.0)
    parser.add_argument(
        "--reads-per-payment", type=float, default=0.5, help="extra home reads (0..1)"
    )
    parser.add_argument("--timeout", type=float, default=20.0, help="per payment, seconds")
    parser.add_argument(
        "--concurrency", type=int, default=2, help="worker pool processes (production: 2)"
    )
    common.add_provider_argument(parser)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    counts = [max(1, int(rate * args.seconds)) for rate in rates]
    warmup = 20
    poll = args.poll_ms / 1000

    common.fresh_database()
    common.flush_bench_redis()
    # The overload step: 1.5 times the knee, at most 1.5 times the highest rate.
    overload_count = int(1.5 * max(rates) * args.seconds)
    total = sum(counts) + warmup + overload_count
    course_id = common.seed_catalogue(trainers=common.trainers_for(total))
    seeded = common.seed_pending_payments(course_id, total)
    common.pay_at_the_provider([p for p, _ in seeded])
    common.slow_provider(args.provider_ms)
    tracks = [Track(str(p), student_id=s, token=common.student_token(s)) for p, s in seeded]
    by_key = {t.key: t for t in tracks}
    reference_steps = [[Track(uuid.uuid4().hex) for _ in range(n)] for n in counts]
    by_key.update({t.key: t for step in reference_steps for t in step})

    def on_event(at: float, channel: str, data: dict) -> None:
        track = by_key.get(data.get("payment_id") or data.get("token") or "")
        if track is None:
            return
        if channel == DONE_CHANNEL and track.done_event is None:
            track.done_event = at
        track.wake.set()

    print(common.machine_note())
    print(f"each provider call waits {args.provider_ms:g} ms at the sandbox")
    payment_rows, reference_rows, knee, ceiling = [], [], None, None
    with (
        common.LiveEvents(
            patterns=("student:*:events",), channels=(DONE_CHANNEL,), on_event=on_event
        ),
        common.gunicorn("bench.reference_wsgi:app") as server,
        common.celery_worker(concurrency=args.concurrency) as worker,
    ):
        client = Client(server.port)
        split = common.CpuSplit(worker.pids, api_pid=server.process.pid)
        reader = random.Random(7)

        def visible(track: Track) -> bool:
            path = HOME.format(student_id=track.student_id)
            # A share of extra reads on the first look: students opening the app.
            if track.polls == 1 and reader.random() < args.reads_per_payment:
                client.request("GET", path, token=track.token)
            status, body = client.request("GET", path, token=track.token)
            return status == 200 and bool((body or {}).get("upcoming_sessions"))

        job = payment_job(client, visible, poll, args.timeout)
        offset = warmup
        open_loop(tracks[:warmup], 10, job, 64)  # warms pools; not reported
        for rate, count in zip(rates, counts, strict=True):
            step = tracks[offset : offset + count]
            offset += count
            threads = int(min(512, max(32, rate * args.timeout)))
            with split.measure() as cpu:
                depth = open_loop(step, rate, job, threads)
            payment_rows.append(_step_row(rate, step, depth, _drained(step), cpu.percent))
            _wait_for_an_empty_queue()
            if _healthy(step, args.provider_ms / 1000):
                knee = rate
            print(f"step {rate:g}/s done", flush=True)
        if knee is not None:
            # Past the knee: confirms must still answer (the outbox takes the burst),
            # nothing may fail, and the queue must drain once the burst is over.
            rate = 1.5 * knee
            step = tracks[offset : offset + int(rate * args.seconds)]
            with split.measure() as cpu:
                depth = open_loop(step, rate, job, int(min(512, max(32, rate * args.timeout))))
            payment_rows.append(
                _step_row(f"{rate:g} (1.5 x knee)", step, depth, _drained(step), cpu.percent)
            )
        reference = reference_job(client, args.timeout)
        for rate, step in zip(rates, reference_steps, strict=True):
            for track in step:
                track.visible = None
            with split.measure() as cpu:
                depth = open_loop(step, rate, reference, int(min(512, max(32, rate * 20))))
            for track in step:
                track.visible = track.done_event
            reference_rows.append(_step_row(rate, step, depth, _drained(step), cpu.percent))
            _wait_for_an_empty_queue()
            if _healthy(step):
                ceiling = rate
    common.flush_bench_redis()

    headers = [
        "offered /s",
        "seen",
        "5xx/errors",
        "confirm p50",
        "confirm p99",
        "visible p50",
        "visible p95",
        "visible p99",
        "max queue",
        "last shown after last confirm, s",
        "CPU % API / workers / PostgreSQL / Redis / load gen",
    ]
    print(
        f"\nopen loop, {args.seconds:g} s per step; worker -c {args.concurrency}; "
        "visible = the home screen shows sessions (read after each live event and every "
        f"{args.poll_ms:g} ms, plus "
        f"{args.reads_per_payment:g} extra home read per payment); milliseconds\n"
    )
    print("Payments (confirm → sessions visible):\n")
    print(common.table(headers, payment_rows))
    print("\nReference: bare 5-task no-op chain (POST → answered; POST → done event):\n")
    print(common.table(headers, reference_rows))
    print(
        f"\nknee (confirm p99 ≤ 50 ms, visible p95 ≤ {150 + args.provider_ms:g} ms): "
        f"{knee if knee is not None else 'below the lowest step'} payments/s; "
        f"the no-op chain's: {ceiling if ceiling is not None else 'below the lowest step'}/s"
    )


if __name__ == "__main__":
    main()
