"""The OpenAPI document accepts exactly what the server accepts where fields depend on
each other: each body is checked against the document's JSON Schema and sent to the
server, and the two agree (a schema-valid body is never a 422, a schema-invalid one is)."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest

from tests.conftest import ADMIN


@pytest.fixture
def spec(client) -> dict[str, Any]:
    return client.get("/openapi.json").json


def validator(spec: dict[str, Any], name: str) -> jsonschema_rs.Draft4Validator:
    """The component `name` as JSON Schema, its references resolved in the document."""
    schema = {**spec["components"]["schemas"][name], "components": spec["components"]}
    return jsonschema_rs.Draft4Validator(schema)


LETTER_BODIES = [
    ({}, False),
    ({"dry_run": True}, False),
    ({"all": False, "dry_run": True}, False),
    ({"all": True, "dry_run": True}, True),
    ({"all": True, "task_name": "x", "dry_run": True}, False),
    ({"task_name": "x", "dry_run": True}, True),
    ({"task_name": "x", "all": False, "dry_run": True}, True),
    ({"course_id": 1, "exception_type": "E", "dry_run": True}, True),
    ({"failed_until": "2026-01-01T00:00:00Z", "dry_run": True}, True),
    # An empty range: a filter no letter passes, not a malformed body.
    (
        {
            "failed_from": "2026-02-01T00:00:00Z",
            "failed_until": "2026-01-01T00:00:00Z",
            "dry_run": True,
        },
        True,
    ),
]


@pytest.mark.parametrize(("body", "valid"), LETTER_BODIES)
def test_the_bulk_filter_rules_are_in_the_document(client, db_session, spec, body, valid):
    assert validator(spec, "DeadLetterFilterIn").is_valid(body) is valid, body
    answer = client.post("/api/v1/admin/dead-letters/discard", json=body, headers=ADMIN)
    assert answer.status_code == (200 if valid else 422), (body, answer.json)
