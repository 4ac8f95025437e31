"""trainer_allocations: waiting for a trainer

- `status` may be `waiting`: the allocation's trainer left (deactivated, or hours that no
  longer hold it) and no other trainer could take it. It holds no trainer place and has
  no future session; it is moved as soon as a trainer is free, and refunded after
  ALLOCATION_GIVE_UP_HOURS counted from `waiting_since` (new, NULL for every other
  status). Existing rows keep their status: none waits.
- A partial index finds a course's waiting allocations when a trainer becomes free.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 04:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = "'approved', 'active', 'completed', 'cancelled'"


def upgrade() -> None:
    op.add_column("trainer_allocations", sa.Column("waiting_since", sa.DateTime(timezone=True)))
    op.drop_constraint(
        op.f("ck_trainer_allocations_status_known"), "trainer_allocations", type_="check"
    )
    op.create_check_constraint(
        "status_known",
        "trainer_allocations",
        "status IN ('approved', 'active', 'waiting', 'completed', 'cancelled')",
    )
    op.create_index(
        "ix_allocations_waiting_course",
        "trainer_allocations",
        ["course_id"],
        postgresql_where=sa.text("status = 'waiting'"),
    )


def downgrade() -> None:
    op.drop_index("ix_allocations_waiting_course", table_name="trainer_allocations")
    op.execute("UPDATE trainer_allocations SET status = 'cancelled' WHERE status = 'waiting'")
    op.drop_constraint(
        op.f("ck_trainer_allocations_status_known"), "trainer_allocations", type_="check"
    )
    op.create_check_constraint("status_known", "trainer_allocations", f"status IN ({STATUSES})")
    op.drop_column("trainer_allocations", "waiting_since")
