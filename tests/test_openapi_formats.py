"""Every timestamp in every answer is ISO 8601 with an offset, exactly where the OpenAPI
document says `format: date-time`: the document drives the check, not a hand list."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from tests.conftest import ADMIN, student_auth
from tests.factories import make_course, make_dead_letter, make_payment, make_student, make_trainer


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = spec["components"]["schemas"][name]
    if "allOf" in schema:
        merged: dict[str, Any] = {"properties": {}}
        for part in schema["allOf"]:
            merged["properties"].update(_resolve(spec, part).get("properties", {}))
        return merged
    return schema


def checked_formats(spec: dict[str, Any], schema: dict[str, Any], value: Any, where: str) -> int:
    """Assert every date/date-time the schema declares; how many were checked."""
    schema = _resolve(spec, schema)
    if value is None:
        return 0
    if schema.get("format") == "date-time":
        parsed = datetime.fromisoformat(value)
        assert parsed.tzinfo is not None, f"{where}: {value!r} has no offset"
        assert "T" in value, f"{where}: {value!r} is not ISO 8601"
        return 1
    if schema.get("format") == "date":
        date.fromisoformat(value)
        return 1
    if schema.get("type") == "array" or "items" in schema:
        return sum(
            checked_formats(spec, schema["items"], item, f"{where}[{i}]")
            for i, item in enumerate(value)
        )
    return sum(
        checked_formats(spec, sub, value[name], f"{where}.{name}")
        for name, sub in schema.get("properties", {}).items()
        if isinstance(value, dict) and name in value
    )


def response_schema(spec: dict[str, Any], path: str, method: str = "get") -> dict[str, Any]:
    responses = spec["paths"][path][method]["responses"]
    ok = next(v for k, v in responses.items() if k.startswith("2"))
    return ok["content"]["application/json"]["schema"]


def test_every_declared_timestamp_of_every_answer_is_iso_8601_with_an_offset(
    client, db_session, eager
):
    spec = client.get("/openapi.json").json
    student, course = make_student(db_session), make_course(db_session)
    make_trainer(db_session, [course])
    payment = make_payment(db_session, student, course)
    auth = student_auth(student.id)
    assert (
        client.post(f"/api/v1/payments/{payment.id}/confirm", json={}, headers=auth).status_code
        == 202
    )
    make_dead_letter(db_session)
    answers = {
        ("/api/v1/payments/{payment_id}", f"/api/v1/payments/{payment.id}"): auth,
        ("/api/v1/students/{student_id}/home", f"/api/v1/students/{student.id}/home"): auth,
        (
            "/api/v1/students/{student_id}/learning",
            f"/api/v1/students/{student.id}/learning",
        ): auth,
        ("/api/v1/events/recent", "/api/v1/events/recent"): auth,
        ("/api/v1/admin/dead-letters", "/api/v1/admin/dead-letters"): ADMIN,
    }
    checked = 0
    for (template, url), headers in answers.items():
        for attempt in range(2):  # a cache miss, then the cached body as it is served
            response = client.get(url, headers=headers)
            assert response.status_code == 200, (url, response.json)
            checked += checked_formats(
                spec, response_schema(spec, template), response.json, f"{url}#{attempt}"
            )
    assert checked >= 40  # sessions, timeline, courses, events, letters
