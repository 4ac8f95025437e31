"""Operator actions on dead letters, and one payment's chain (admin token)."""

from __future__ import annotations

import uuid
from typing import Any

from flask_smorest import Blueprint

from actions import dead_letters
from app.auth import ADMIN_SECURITY, admin_only
from app.db import db
from app.runtime import runtime
from app.schemas import (
    BulkOut,
    DeadLetterFilterIn,
    DeadLetterOut,
    DeadLetterPage,
    DeadLetterQuery,
    ErrorOut,
    PaymentChainOut,
)
from domain.operator_view import payment_chain
from domain.read_models import get_dead_letter, list_dead_letters
from tasks.chains import RECORDED_STEPS

blp = Blueprint(
    "admin",
    __name__,
    description="Dead letters: list, replay, discard; one payment's chain (admin).",
)


@blp.route("/admin/payments/<uuid:payment_id>", methods=["GET"])
@admin_only
@blp.doc(security=ADMIN_SECURITY)
@blp.response(200, PaymentChainOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(404, schema=ErrorOut)
def show_payment_chain(payment_id: uuid.UUID):
    """One payment as its chain: each step in order with its runs (task id, duration,
    trace id, Flower link), retries and dead letters; the state and the timeline. The
    operator's payment page (/admin/payments/{id}) reads it."""
    return {
        **payment_chain(db(), payment_id, RECORDED_STEPS),
        "flower_url": runtime().settings.flower_public_url,
    }


@blp.route("/admin/dead-letters", methods=["GET"])
@admin_only
@blp.doc(security=ADMIN_SECURITY)
@blp.arguments(DeadLetterQuery, location="query")
@blp.response(200, DeadLetterPage)
@blp.alt_response(401, schema=ErrorOut)
def list_letters(query: dict[str, Any]):
    items, total = list_dead_letters(db(), **query)
    return {"items": items, "page": query["page"], "per_page": query["per_page"], "total": total}


@blp.route("/admin/dead-letters/<int(max=9223372036854775807):letter_id>", methods=["GET"])
@admin_only
@blp.doc(security=ADMIN_SECURITY)
@blp.response(200, DeadLetterOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(404, schema=ErrorOut)
def show_letter(letter_id: int):
    return get_dead_letter(db(), letter_id)


@blp.route("/admin/dead-letters/<int(max=9223372036854775807):letter_id>/replay", methods=["POST"])
@admin_only
@blp.doc(security=ADMIN_SECURITY)
@blp.response(200, DeadLetterOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(404, schema=ErrorOut)
@blp.alt_response(409, schema=ErrorOut)
def replay_letter(letter_id: int):
    return dead_letters.replay(runtime().database, letter_id)


@blp.route("/admin/dead-letters/<int(max=9223372036854775807):letter_id>/discard", methods=["POST"])
@admin_only
@blp.doc(security=ADMIN_SECURITY)
@blp.response(200, DeadLetterOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(404, schema=ErrorOut)
@blp.alt_response(409, schema=ErrorOut)
def discard_letter(letter_id: int):
    return dead_letters.discard(runtime().database, letter_id)


@blp.route("/admin/dead-letters/<any(replay, discard):action>", methods=["POST"])
@admin_only
@blp.doc(security=ADMIN_SECURITY)
@blp.arguments(DeadLetterFilterIn)
@blp.response(200, BulkOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(422, schema=ErrorOut)
def act_on_matching(body: dict[str, Any], action: str):
    """Replay or discard every open letter matching the filter; `dry_run` only counts
    them and lists the first 100."""
    return dead_letters.bulk(runtime().database, action, **body)
