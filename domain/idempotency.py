"""Idempotency-Key for POST /payments: same key and body → the same answer; the same key
with another body → 409 idempotency_key_reused: the key is already bound to a request, a
conflict with stored state (the same body under a fresh key is fine), where the IETF
draft suggests 422, which a client cannot tell from a malformed body."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from domain.errors import Conflict
from models import IdempotencyKey


def fingerprint(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: dict[str, Any]


def claim_key(session: Session, key: str, request_fingerprint: str) -> StoredResponse | None:
    """Claim `key` in the caller's transaction, or return the answer stored under it.

    A concurrent request with the same key waits on the primary key until the first
    transaction ends, then sees its stored answer (or, if it rolled back, claims it).
    """
    claimed = session.scalar(
        pg_insert(IdempotencyKey)
        .values(
            key=key, request_fingerprint=request_fingerprint, response_status=0, response_body={}
        )
        .on_conflict_do_nothing()
        .returning(IdempotencyKey.key)
    )
    if claimed is not None:
        return None
    stored = session.scalars(select(IdempotencyKey).where(IdempotencyKey.key == key)).one()
    if stored.request_fingerprint != request_fingerprint:
        raise Conflict(
            "idempotency_key_reused",
            "This Idempotency-Key was used with a different request body.",
            idempotency_key=key,
        )
    return StoredResponse(stored.response_status, stored.response_body)


def stored_answer(session: Session, key: str, request_fingerprint: str) -> StoredResponse | None:
    """The answer already stored under `key` (None if unknown or still being made);
    the same key with another body is refused."""
    stored = session.get(IdempotencyKey, key)
    if stored is None or stored.response_status == 0:
        return None
    if stored.request_fingerprint != request_fingerprint:
        raise Conflict(
            "idempotency_key_reused",
            "This Idempotency-Key was used with a different request body.",
            idempotency_key=key,
        )
    return StoredResponse(stored.response_status, stored.response_body)


def store_response(session: Session, key: str, status: int, body: dict[str, Any]) -> None:
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.key == key)
        .values(response_status=status, response_body=body)
    )
