"""Catalogue endpoints: admin only, validated, 201 with the id."""

from sqlalchemy import func, select

from models import Student, TrainerCourse
from tests.conftest import ADMIN


def test_create_student_course_and_trainer(client, db_session):
    student = client.post(
        "/api/v1/students",
        json={"name": "Ana", "email": "ana@example.com", "timezone": "America/Lima"},
        headers=ADMIN,
    )
    assert student.status_code == 201
    assert student.json["id"] > 0
    course = client.post("/api/v1/courses", json={"title": "Chess"}, headers=ADMIN)
    assert course.status_code == 201
    trainer = client.post(
        "/api/v1/trainers",
        json={
            "name": "Tom",
            "email": "tom@example.com",
            "max_students": 4,
            "course_ids": [course.json["id"]],
        },
        headers=ADMIN,
    )
    assert trainer.status_code == 201
    assert trainer.json["course_ids"] == [course.json["id"]]
    assert trainer.json["active_students"] == 0
    assert db_session.scalar(select(func.count()).select_from(TrainerCourse)) == 1


def test_catalogue_needs_the_admin_token(client, db_session):
    body = {"name": "Ana", "email": "ana@example.com", "timezone": "UTC"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        response = client.post("/api/v1/students", json=body, headers=headers)
        assert response.status_code == 401
        assert response.json["error"]["code"] == "unauthorized"
    assert db_session.scalar(select(func.count()).select_from(Student)) == 0


def test_duplicate_email_is_a_conflict(client):
    body = {"name": "Ana", "email": "ana@example.com", "timezone": "UTC"}
    assert client.post("/api/v1/students", json=body, headers=ADMIN).status_code == 201
    again = client.post("/api/v1/students", json=body, headers=ADMIN)
    assert again.status_code == 409
    assert again.json["error"]["code"] == "email_taken"


def test_unknown_timezone_is_rejected(client):
    body = {"name": "Ana", "email": "ana@example.com", "timezone": "Mars/Olympus"}
    response = client.post("/api/v1/students", json=body, headers=ADMIN)
    assert response.status_code == 422
    assert "timezone" in response.json["error"]["details"]["json"]


def test_trainer_with_unknown_course_is_rejected(client):
    body = {"name": "T", "email": "t@example.com", "max_students": 2, "course_ids": [999]}
    response = client.post("/api/v1/trainers", json=body, headers=ADMIN)
    assert response.status_code == 404
    assert response.json["error"]["details"] == {"course_ids": [999]}
