"""gunicorn settings for the API (`gunicorn --config gunicorn.conf.py wsgi:app`)."""

import os
import shutil
import tempfile

bind = os.environ.get("API_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("API_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("API_THREADS", "4"))
timeout = 30
graceful_timeout = 10
accesslog = None  # request lines come from the app's structured log
# gunicorn's control socket has one default path per user; several API processes on
# one host (scaling out, tests, benchmarks) would fight over it, and nothing uses it.
control_socket_disable = True

# Prometheus: every worker writes its samples here; /metrics sums them.
_metrics_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), "tutorflow-prometheus")
)


def on_starting(server):
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    os.makedirs(_metrics_dir, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
