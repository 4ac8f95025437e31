"""step_runs: each committed run of a pipeline step, for the operator's payment page

One row per step run that committed: the task's Celery id (Flower's link), its start and
its commit, and its trace id when tracing is on. Written in the step's transaction
(actions.steps.once). Existing payments have none: their page shows the timeline only.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "step_runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("correlation_id", sa.String(length=64), nullable=False),
        sa.Column("step", sa.String(length=255), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("trace_id", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_step_runs")),
    )
    op.create_index("ix_step_runs_correlation", "step_runs", ["correlation_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_step_runs_correlation", table_name="step_runs")
    op.drop_table("step_runs")
