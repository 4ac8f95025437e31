"""holds: a trainer's place, taken at checkout until the payment is verified

- `holds`: one per payment to be (`payment_id` UNIQUE, no foreign key: the hold is placed
  before the provider is asked and the payment row written). The tier's span is kept with
  it (the student's zone, slot, session length, number of sessions, the day it counts
  from), so availability projects a hold's booked time as it projects an allocation's.
  Live: status `held` and `expires_at` in the future; a partial index serves the count
  per trainer that every checkout and availability read makes.
- No existing rows: payments made before this revision have no hold, and the allocation
  step searches for a trainer for them as before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 04:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "holds",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("payment_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("student_id", sa.BigInteger(), nullable=False),
        sa.Column("course_id", sa.BigInteger(), nullable=False),
        sa.Column("trainer_id", sa.BigInteger(), nullable=False),
        sa.Column("time_slot", sa.Time(), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("session_minutes", sa.SmallInteger(), nullable=False),
        sa.Column("sessions", sa.SmallInteger(), nullable=False),
        sa.Column("starts_after", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="held", nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "status IN ('held', 'converted', 'released')", name=op.f("ck_holds_status_known")
        ),
        sa.CheckConstraint("sessions > 0", name=op.f("ck_holds_sessions_positive")),
        sa.ForeignKeyConstraint(
            ["student_id"], ["students.id"], name=op.f("fk_holds_student_id_students")
        ),
        sa.ForeignKeyConstraint(
            ["course_id"], ["courses.id"], name=op.f("fk_holds_course_id_courses")
        ),
        sa.ForeignKeyConstraint(
            ["trainer_id"], ["trainers.id"], name=op.f("fk_holds_trainer_id_trainers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_holds")),
        sa.UniqueConstraint("payment_id", name=op.f("uq_holds_payment_id")),
    )
    op.create_index(
        "ix_holds_trainer_held",
        "holds",
        ["trainer_id", "expires_at"],
        postgresql_where=sa.text("status = 'held'"),
    )


def downgrade() -> None:
    op.drop_index("ix_holds_trainer_held", table_name="holds")
    op.drop_table("holds")
