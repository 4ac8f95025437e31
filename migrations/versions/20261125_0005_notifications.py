"""notifications: the e-mails owed to students and trainers

- `notifications`: one row per (kind, recipient, correlation id, occasion), UNIQUE, written
  in the same transaction as the change it tells of, so a redelivered step or a replay
  never owes the same e-mail twice. It keeps the rendered subject and body, the
  Message-ID every attempt sends (derived from the key), and the send's progress:
  status pending → sending → sent (or retrying, failed), attempts, last error, sent_at.
  No existing rows: nothing was ever sent before this revision.
- The outbox gains no column: a send is an outbox message of kind `send_notification`
  (a free-text kind, no constraint to widen).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("recipient", sa.String(length=254), nullable=False),
        sa.Column("correlation_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("occasion", sa.String(length=200), server_default="", nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'sending', 'retrying', 'sent', 'failed')",
            name=op.f("ck_notifications_status_known"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sa.UniqueConstraint(
            "kind", "recipient", "correlation_id", "occasion", name="uq_notifications_key"
        ),
        sa.UniqueConstraint("message_id", name=op.f("uq_notifications_message_id")),
    )
    op.create_index("ix_notifications_correlation", "notifications", ["correlation_id"])


def downgrade() -> None:
    op.drop_index("ix_notifications_correlation", table_name="notifications")
    op.drop_table("notifications")
