"""dead_letters: one opaque redelivery value, and the failure's kind

- `redelivery` (JSONB) replaces `args`, `kwargs` and `chain`: what a replay hands back to
  the workers, written and read by them alone (tasks/redelivery.py); the domain stores
  it without reading it. Existing letters: `{"task_name", "args", "kwargs", "chain"}`
  from their columns, the shape the workers write.
- `failure_kind`: what kind of failure parked the letter, decided where the error was
  caught (models.FailureKind): the safe reason a student reads, and whether it is a
  fault (no trainer free yet is a wait). Existing letters: from `exception_type`, as
  the reasons were looked up until now.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The kind of each error the reasons named until now (domain.errors.SAFE_REASONS at 0007).
KINDS = {
    "domain.errors.NoTrainerAvailable": "no_trainer",
    "domain.payments.NotSettledYet": "not_settled",
    "domain.errors.TransientStepError": "service_unavailable",
    "domain.errors.PermanentStepError": "needs_operator",
    "sqlalchemy.exc.OperationalError": "database_unavailable",
    "sqlalchemy.exc.IntegrityError": "conflict",
    "kombu.exceptions.OperationalError": "broker_unavailable",
    "redis.exceptions.ConnectionError": "broker_unavailable",
    "redis.exceptions.TimeoutError": "broker_unavailable",
    "billiard.exceptions.SoftTimeLimitExceeded": "too_slow",
}
ALL_KINDS = (
    "no_trainer",
    "not_settled",
    "service_unavailable",
    "needs_operator",
    "database_unavailable",
    "conflict",
    "broker_unavailable",
    "too_slow",
    "unexpected",
)


def upgrade() -> None:
    op.add_column(
        "dead_letters",
        sa.Column(
            "redelivery",
            postgresql.JSONB(astext_type=sa.Text()),
            nullable=False,
            server_default=sa.text("'{}'::jsonb"),
        ),
    )
    op.execute(
        "UPDATE dead_letters SET redelivery = jsonb_build_object("
        "'task_name', task_name, 'args', args, 'kwargs', kwargs, 'chain', chain)"
    )
    op.alter_column("dead_letters", "redelivery", server_default=None)
    op.drop_column("dead_letters", "args")
    op.drop_column("dead_letters", "kwargs")
    op.drop_column("dead_letters", "chain")

    op.add_column(
        "dead_letters",
        sa.Column(
            "failure_kind", sa.String(length=32), nullable=False, server_default="unexpected"
        ),
    )
    cases = " ".join(f"WHEN '{name}' THEN '{kind}'" for name, kind in KINDS.items())
    op.execute(
        f"UPDATE dead_letters SET failure_kind = CASE exception_type {cases} ELSE 'unexpected' END"
    )
    op.alter_column("dead_letters", "failure_kind", server_default=None)
    op.create_check_constraint(
        "failure_kind_known",
        "dead_letters",
        "failure_kind IN ({})".format(", ".join(f"'{kind}'" for kind in ALL_KINDS)),
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_dead_letters_failure_kind_known"), "dead_letters", type_="check")
    op.drop_column("dead_letters", "failure_kind")
    for name, empty in (("args", "[]"), ("kwargs", "{}"), ("chain", "[]")):
        op.add_column(
            "dead_letters",
            sa.Column(
                name,
                postgresql.JSONB(astext_type=sa.Text()),
                nullable=False,
                server_default=sa.text(f"'{empty}'::jsonb"),
            ),
        )
        op.execute(
            f"UPDATE dead_letters SET {name} = COALESCE(redelivery -> '{name}', '{empty}'::jsonb)"
        )
    op.drop_column("dead_letters", "redelivery")
