"""Student read models (cached), live updates (SSE) and the polling fallback."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

from flask import Response, request
from flask_smorest import Blueprint
from marshmallow import Schema
from redis.client import PubSub

from app.auth import STUDENT_SECURITY, Caller, caller, student_or_admin
from app.db import db
from app.errors import ApiError
from app.runtime import runtime
from app.schemas import ErrorOut, HomeOut, LearningOut, RecentOut, RecentQuery, StreamTicketOut
from core.cache import student_channel
from core.tokens import InvalidToken
from domain.clock import utcnow
from domain.read_models import get_student, recent_events, student_home, student_learning

blp = Blueprint("students", __name__, description="Student home screen and live updates.")
ID = "<int(max=9223372036854775807):student_id>"
KEEP_ALIVE_SECONDS = 15


def _stream_caller() -> Caller:
    """A stream ticket in the query string, or the usual bearer header."""
    ticket = request.args.get("ticket")
    if ticket is None:
        student_or_admin(lambda: None)()
        return caller()
    try:
        identity = runtime().tokens.verify_stream_ticket(ticket)
    except InvalidToken as exc:
        error = ApiError(401, "unauthorized", f"The stream ticket was refused: {exc}.")
        error.headers = {"WWW-Authenticate": 'Bearer realm="tutorflow"'}
        raise error from exc
    return Caller(admin=False, student_id=identity.student_id)


def _cached(kind: str, student_id: int, loader, schema: type[Schema]) -> Response:
    """The read model as JSON, cache-aside (the body is what the cache stores)."""

    def load() -> str:
        return json.dumps(schema().dump(loader(db(), student_id, now=utcnow())))

    body, hit = runtime().cache.cached_read_model(kind, student_id, load)
    return Response(
        body, mimetype="application/json", headers={"X-Cache": "hit" if hit else "miss"}
    )


@blp.route(f"/students/{ID}/home", methods=["GET"])
@student_or_admin
@blp.doc(security=STUDENT_SECURITY)
@blp.response(200, HomeOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(403, schema=ErrorOut)
@blp.alt_response(404, schema=ErrorOut)
def home(student_id: int):
    caller().require_student(student_id)
    return _cached("home", student_id, student_home, HomeOut)


@blp.route(f"/students/{ID}/learning", methods=["GET"])
@student_or_admin
@blp.doc(security=STUDENT_SECURITY)
@blp.response(200, LearningOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(403, schema=ErrorOut)
@blp.alt_response(404, schema=ErrorOut)
def learning(student_id: int):
    caller().require_student(student_id)
    return _cached("learning", student_id, student_learning, LearningOut)


@blp.route("/events/recent", methods=["GET"])
@student_or_admin
@blp.doc(security=STUDENT_SECURITY)
@blp.arguments(RecentQuery, location="query")
@blp.response(200, RecentOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(403, schema=ErrorOut)
@blp.alt_response(404, schema=ErrorOut)
def recent(query: dict[str, Any]):
    """The token's student's events after the cursor `since` (an operator may name a
    student with `student_id`, or see every student's)."""
    who = caller()
    student_id = query.get("student_id", who.student_id)
    if student_id is not None:
        who.require_student(student_id)
    return recent_events(db(), student_id, since=query["since"])


@blp.route(f"/students/{ID}/stream-tickets", methods=["POST"])
@student_or_admin
@blp.doc(security=STUDENT_SECURITY)
@blp.response(201, StreamTicketOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(403, schema=ErrorOut)
def stream_ticket(student_id: int):
    """A ticket for the event stream (EventSource sends no headers): one student,
    about a minute, streaming only."""
    caller().require_student(student_id)
    ticket, expires = runtime().tokens.stream_ticket(student_id)
    return {
        "ticket": ticket,
        "expires_at": expires,
        "stream_url": f"/api/v1/students/{student_id}/events/stream?ticket={ticket}",
    }


@blp.route(f"/students/{ID}/events/stream", methods=["GET"])
@blp.doc(
    security=STUDENT_SECURITY,
    parameters=[
        {
            "in": "query",
            "name": "ticket",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$", "maxLength": 1024},
            "description": "A stream ticket (POST …/stream-tickets), instead of a header.",
        }
    ],
)
@blp.alt_response(200, description="Server-Sent Events: one `update` per domain event.")
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(403, schema=ErrorOut)
@blp.alt_response(404, schema=ErrorOut)
@blp.alt_response(
    429,
    schema=ErrorOut,
    description="Every stream slot of this process is taken: poll `/events/recent`, and "
    "open a stream again after `Retry-After` seconds (a slot frees within a stream's length).",
    headers={"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}},
)
def stream(student_id: int):
    _stream_caller().require_student(student_id)
    get_student(db(), student_id)  # 404 before a slot is taken
    # A client turned away (every slot of this process taken) falls back to polling.
    # 429, not 503: this is admission control on concurrent streams (as a concurrency
    # limiter answers), not a failing or overloaded service; every other request is served.
    app = runtime()
    if not app.stream_slots.acquire(blocking=False):
        error = ApiError(429, "streams_full", "No stream slot free; poll /events/recent.")
        error.headers = {"Retry-After": str(math.ceil(app.settings.stream_seconds))}
        raise error
    try:
        pubsub = app.cache.client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(student_channel(student_id))
    except Exception:
        app.stream_slots.release()
        raise
    return Response(
        _events(pubsub, app.settings.stream_seconds, app.stream_slots),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _events(pubsub: PubSub, seconds: float, slots: threading.BoundedSemaphore) -> Iterator[str]:
    try:
        yield "retry: 2000\n: connected\n\n"
        deadline = time.monotonic() + seconds
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1.0)
            if message is not None:
                yield f"event: update\ndata: {message['data'].decode()}\n\n"
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > KEEP_ALIVE_SECONDS:
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()
        # The browser's EventSource reconnects by itself after `retry`.
    finally:
        pubsub.close()
        slots.release()
