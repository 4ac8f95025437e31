"""Catalogue endpoints (admin): students, courses, trainers."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from actions import catalogue
from app.auth import ADMIN_SECURITY, admin_only
from app.runtime import runtime
from app.schemas import (
    CourseIn,
    CourseOut,
    ErrorOut,
    StudentIn,
    StudentOut,
    TrainerIn,
    TrainerOut,
    TrainerPatch,
)

blp = Blueprint("catalogue", __name__, description="Students, courses and trainers (admin).")


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
