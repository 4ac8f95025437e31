"""The OpenAPI document accepts exactly what the server accepts where fields depend on
each other (the bulk dead-letter filter, a trainer's working day): each body is checked
against the document's JSON Schema and by the server, and the two agree (a schema-valid
body is never a 422, a schema-invalid one is)."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest

from app.schemas import WorkingDayIn
from tests.conftest import ADMIN
from tests.factories import make_course


@pytest.fixture
def spec(client) -> dict[str, Any]:
    return client.get("/openapi.json").json


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` as JSON Schema's null type (as schemathesis reads it)."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    return out


def validator(spec: dict[str, Any], name: str) -> jsonschema_rs.Draft4Validator:
    """The component `name` as JSON Schema, its references resolved in the document."""
    schema = {**spec["components"]["schemas"][name], "components": spec["components"]}
    return jsonschema_rs.Draft4Validator(_json_schema(schema))


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


QUARTER_TIMES = [f"{h:02d}:{m}" for h in range(24) for m in ("00", "15", "30", "45")]


def test_every_working_day_the_document_accepts_the_server_accepts_and_no_other(spec):
    """All 96 x 97 quarter-hour days, and times between quarters: the document's
    WorkingDayIn and the server's schema agree on each."""
    document = validator(spec, "WorkingDayIn")
    server = WorkingDayIn()
    days = [(s, e) for s in QUARTER_TIMES for e in [*QUARTER_TIMES, "24:00"]]
    days += [("09:05", "17:00"), ("09:00", "17:10"), ("09:00", "09:01"), ("24:00", "24:00")]
    for starts, ends in days:
        day = {"starts": starts, "ends": ends}
        accepted = not server.validate(day)
        assert document.is_valid(day) is accepted, day
        on_quarters = starts in QUARTER_TIMES and ends in [*QUARTER_TIMES, "24:00"]
        assert accepted is (on_quarters and ends > starts)


@pytest.mark.parametrize(
    ("day", "status"),
    [
        ({"starts": "09:00", "ends": "17:30"}, 201),
        ({"starts": "23:45", "ends": "24:00"}, 201),
        ({"starts": "18:00", "ends": "09:00"}, 422),
        ({"starts": "09:00", "ends": "09:00"}, 422),
        ({"starts": "09:05", "ends": "17:00"}, 422),
    ],
)
def test_a_trainers_working_day_is_refused_exactly_when_the_document_refuses_it(
    client, db_session, spec, day, status
):
    course = make_course(db_session)
    body = {
        "name": "T",
        "email": "t@example.com",
        "max_students": 2,
        "course_ids": [course.id],
        "working_hours": {"mon": day},
    }
    assert validator(spec, "WorkingDayIn").is_valid(day) is (status == 201)
    answer = client.post("/api/v1/trainers", json=body, headers=ADMIN)
    assert answer.status_code == status, answer.json


@pytest.mark.parametrize(
    ("hours", "valid"),
    [
        ({}, True),
        ({"mon": None, "tue": {"starts": "08:00", "ends": "12:00"}}, True),
        ({"sun": {}}, False),  # apispec's nullable $ref let any object through
        ({"sun": {"starts": "08:00"}}, False),
        ({"sun": "08:00-12:00"}, False),
    ],
)
def test_a_day_is_null_or_a_whole_working_day(client, db_session, spec, hours, valid):
    document = validator(spec, "WorkingHoursIn")
    assert document.is_valid(hours) is valid, hours
    trainer = client.post(
        "/api/v1/trainers",
        json={
            "name": "T",
            "email": "t@example.com",
            "max_students": 2,
            "course_ids": [make_course(db_session).id],
        },
        headers=ADMIN,
    ).json
    answer = client.patch(
        f"/api/v1/trainers/{trainer['id']}", json={"working_hours": hours}, headers=ADMIN
    )
    assert answer.status_code == (200 if valid else 422), answer.json
