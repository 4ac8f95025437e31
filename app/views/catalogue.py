"""Catalogue endpoints: students, courses, trainers (admin); the courses a client app
reads (any student, or admin)."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from actions import catalogue
from app.auth import ADMIN_SECURITY, STUDENT_SECURITY, admin_only, student_or_admin
from app.db import db
from app.runtime import runtime
from app.schemas import (
    CatalogueCourseOut,
    CourseIn,
    CourseOut,
    CoursePage,
    CoursePatch,
    CourseQuery,
    ErrorOut,
    StudentIn,
    StudentOut,
    TrainerIn,
    TrainerOut,
    TrainerPatch,
)
from domain.read_models import get_course, list_courses

blp = Blueprint(
    "catalogue",
    __name__,
    description="Students, courses and trainers (admin); the courses on sale (students).",
)
COURSE = "<int(max=9223372036854775807):course_id>"


@blp.route("/students", methods=["POST"])
@admin_only
@blp.doc(security=ADMIN_SECURITY)
@blp.arguments(StudentIn)
@blp.response(201, StudentOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(409, schema=ErrorOut)
def create_student(data: dict[str, Any]):
    return catalogue.create_student(runtime().database, **data)


@blp.route("/courses", methods=["POST"])
@admin_only
@blp.doc(security=ADMIN_SECURITY)
@blp.arguments(CourseIn)
@blp.response(201, CourseOut)
@blp.alt_response(401, schema=ErrorOut)
def create_course(data: dict[str, Any]):
    return catalogue.create_course(runtime().database, **data)


@blp.route("/courses", methods=["GET"])
@student_or_admin
@blp.doc(security=STUDENT_SECURITY)
@blp.arguments(CourseQuery, location="query")
@blp.response(200, CoursePage)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(422, schema=ErrorOut)
def list_catalogue(query: dict[str, Any]):
    """The catalogue, by course id, a page at a time."""
    items, total = list_courses(db(), **query)
    return {"items": items, "page": query["page"], "per_page": query["per_page"], "total": total}


@blp.route(f"/courses/{COURSE}", methods=["GET"])
@student_or_admin
@blp.doc(security=STUDENT_SECURITY)
@blp.response(200, CatalogueCourseOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(404, schema=ErrorOut)
def show_course(course_id: int):
    return get_course(db(), course_id)


@blp.route(f"/courses/{COURSE}", methods=["PATCH"])
@admin_only
@blp.doc(security=ADMIN_SECURITY)
# Optional, as for trainers: a PATCH that names nothing answers the course as it is.
@blp.arguments(CoursePatch, required=False)
@blp.response(200, CatalogueCourseOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(404, schema=ErrorOut)
@blp.alt_response(422, schema=ErrorOut)
def update_course(data: dict[str, Any], course_id: int):
    """Title, session length, prices per tier.

    Checkouts charge a new price from now on; payments keep the amount and currency
    they were created at. Sessions already booked keep their length; those scheduled
    from now on have the new one. The currency cannot change."""
    return catalogue.update_course(runtime().database, course_id, **data)


@blp.route("/trainers", methods=["POST"])
@admin_only
@blp.doc(security=ADMIN_SECURITY)
@blp.arguments(TrainerIn)
@blp.response(201, TrainerOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(409, schema=ErrorOut)
def create_trainer(data: dict[str, Any]):
    return catalogue.create_trainer(runtime().database, **data)


@blp.route("/trainers/<int(max=9223372036854775807):trainer_id>", methods=["PATCH"])
@admin_only
@blp.doc(security=ADMIN_SECURITY)
# Optional: every field is, and a PATCH that names none (no body, or `{}`) changes
# nothing and answers the trainer as it is.
@blp.arguments(TrainerPatch, required=False)
@blp.response(200, TrainerOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(404, schema=ErrorOut)
@blp.alt_response(409, schema=ErrorOut)
def update_trainer(data: dict[str, Any], trainer_id: int):
    """Capacity, working hours, timezone, active. Students the trainer can no longer
    serve are moved to other trainers by a reallocation chain each (`reallocating`)."""
    return catalogue.update_trainer(runtime().database, trainer_id, **data)
