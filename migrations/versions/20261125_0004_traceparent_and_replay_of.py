"""trace context on outbox rows, replay links between dead letters

- `outbox.traceparent`: the W3C traceparent of the transaction that wrote the row, so
  the relay that publishes it later continues the same trace. Existing rows: NULL
  (published without a parent, as before).
- `dead_letters.replay_of`: the letter whose replay led to this one (a replay of an
  unfixed cause fails again and parks a new letter that points at the old). Existing
  letters: NULL.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 06:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("traceparent", sa.String(length=55), nullable=True))
    op.add_column("dead_letters", sa.Column("replay_of", sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        op.f("fk_dead_letters_replay_of_dead_letters"),
        "dead_letters",
        "dead_letters",
        ["replay_of"],
        ["id"],
        ondelete="SET NULL",
    )


def downgrade() -> None:
    op.drop_constraint(
        op.f("fk_dead_letters_replay_of_dead_letters"), "dead_letters", type_="foreignkey"
    )
    op.drop_column("dead_letters", "replay_of")
    op.drop_column("outbox", "traceparent")
