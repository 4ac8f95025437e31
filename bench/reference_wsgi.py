"""The real app plus bench-only reference routes, served by the same gunicorn config.

    gunicorn --config gunicorn.conf.py bench.reference_wsgi:app

- POST /bench/ref/bare/<token>: parse the JSON body, answer JSON (the floor of a request);
- POST /bench/ref/insert-publish/<token>: one INSERT and commit, then one Celery publish
  (the floor of "write, commit, hand off");
- POST /bench/ref/chain/<token>: publish the 5-task no-op chain (end-to-end reference);
- GET /bench/ref/home-uncached/<student_id>: the home read model without the cache.

The table `bench_reference` is created by the bench script (common.create_reference_table).
"""

from __future__ import annotations

from flask import jsonify, request
from sqlalchemy import text

import bench.common  # noqa: F401  (bench stores, before any project module)
from app import create_app
from app.db import db
from app.schemas import HomeOut
from bench import noop_tasks
from bootstrap import bootstrap
from domain.clock import utcnow
from domain.read_models import student_home

app = create_app()
celery = bootstrap().celery


def bare(token: str):
    body = request.get_json(silent=True) or {}
    return jsonify(token=token, provider_payment_id=body.get("provider_payment_id")), 202


def insert_publish(token: str):
    body = request.get_json(silent=True) or {}
    session = db()
    session.execute(text("INSERT INTO bench_reference (token) VALUES (:token)"), {"token": token})
    session.commit()
    celery.signature(noop_tasks.NOOP, (token,)).apply_async()
    return jsonify(token=token, provider_payment_id=body.get("provider_payment_id")), 202


def home_uncached(student_id: int):
    """The home read model straight from PostgreSQL, same query and schema, no cache."""
    model = student_home(db(), student_id, now=utcnow())
    return jsonify(HomeOut().dump(model))


def publish_chain(token: str):
    noop_tasks.noop_chain(celery, token).apply_async()
    return jsonify(token=token), 202


app.add_url_rule("/bench/ref/bare/<token>", view_func=bare, methods=["POST"])
app.add_url_rule("/bench/ref/insert-publish/<token>", view_func=insert_publish, methods=["POST"])
app.add_url_rule("/bench/ref/chain/<token>", view_func=publish_chain, methods=["POST"])
app.add_url_rule("/bench/ref/home-uncached/<int:student_id>", view_func=home_uncached)
