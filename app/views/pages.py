"""The student page: plain HTML and JavaScript, no build step."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, send_from_directory

blp = Blueprint("pages", __name__)
STATIC = Path(__file__).resolve().parent.parent / "static"


@blp.get("/students/<int(max=9223372036854775807):student_id>")
def student_page(student_id: int):
    return send_from_directory(STATIC, "student.html", max_age=0)
