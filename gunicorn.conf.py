"""gunicorn settings for the API (`gunicorn --config gunicorn.conf.py wsgi:app`),
taken from the one Settings object (core/config.py)."""

import os
import shutil
import tempfile

from core.config import get_settings, http_url
from core.logs import configure_logging, say_ready

# prometheus_client reads this variable itself, when it is imported: under gunicorn
# there is always one, so every worker writes its samples there and /metrics sums them.
os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), "tutorflow-prometheus")
)
settings = get_settings()

bind = settings.api_bind
workers = settings.api_workers
# gunicorn's gthread worker, closing connections off its main thread: a client slow to
# close its end no longer holds up every other connection (core/gunicorn_worker.py).
worker_class = "core.gunicorn_worker.GracefulThreadWorker"
threads = settings.api_threads
timeout = 30
# gunicorn's default, said here: an idle kept-alive connection is closed after 2 s.
keepalive = 2
# The longest request line gunicorn reads (its maximum): a stream ticket in the query
# string fits with room to spare, so a bad one reaches the app and gets its JSON 401.
limit_request_line = 8190
graceful_timeout = 10
# No gunicorn access log: the app logs one line per request (method, path, status,
# duration_ms, request_id) in its structured log (app/metrics.py).
accesslog = None
# gunicorn's own INFO lines (its version, "Listening at", the worker class, one "Booting
# worker" each) give way to the one ready line below; its warnings and errors (a worker
# timed out or killed) still print.
loglevel = "warning"
# gunicorn's control socket has one default path per user; several API processes on
# one host (scaling out, tests, benchmarks) would fight over it, and nothing uses it.
control_socket_disable = True


def on_starting(server):
    metrics_dir = settings.prometheus_multiproc_dir
    shutil.rmtree(metrics_dir, ignore_errors=True)
    os.makedirs(metrics_dir, exist_ok=True)


def when_ready(server):
    configure_logging(settings.log_level, settings.log_json)
    url = http_url(settings.api_bind)
    say_ready("api", f"{url}/ (docs {url}/docs; {workers} processes of {threads} threads)")


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, settings.prometheus_multiproc_dir)
