"""The student page: plain HTML and JavaScript, no build step."""

from __future__ import annotations

from flask import Blueprint, current_app, send_from_directory

blp = Blueprint("pages", __name__)


@blp.get("/students/<int(max=9223372036854775807):student_id>")
def student_page(student_id: int):
    return send_from_directory(current_app.static_folder, "student.html", max_age=0)
