"""catalogue prices, payment verification

A course gets a currency (existing courses: EUR) and a price per tier in
`course_prices` (existing courses get 99.00 / 189.00 / 269.00 for 10 / 20 / 30
sessions, to be adjusted by an admin). Payments gain the `confirming` status (the
student said they paid; the provider is being asked) and a `failure_reason`.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_PRICES = {10: 9900, 20: 18900, 30: 26900}


def upgrade() -> None:
    op.add_column(
        "courses",
        sa.Column("currency", sa.String(length=3), server_default="EUR", nullable=False),
    )
    op.create_check_constraint("currency_iso", "courses", "currency ~ '^[A-Z]{3}$'")
    prices = op.create_table(
        "course_prices",
        sa.Column("course_id", sa.BigInteger(), nullable=False),
        sa.Column("tier", sa.SmallInteger(), nullable=False),
        sa.Column("amount_cents", sa.Integer(), nullable=False),
        sa.CheckConstraint("amount_cents > 0", name=op.f("ck_course_prices_amount_positive")),
        sa.CheckConstraint("tier IN (10, 20, 30)", name=op.f("ck_course_prices_tier_known")),
        sa.ForeignKeyConstraint(
            ["course_id"],
            ["courses.id"],
            name=op.f("fk_course_prices_course_id_courses"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("course_id", "tier", name=op.f("pk_course_prices")),
    )
    courses = sa.table("courses", sa.column("id", sa.BigInteger()))
    for tier, amount in DEFAULT_PRICES.items():
        op.execute(
            prices.insert().from_select(
                ["course_id", "tier", "amount_cents"],
                sa.select(courses.c.id, sa.literal(tier), sa.literal(amount)),
            )
        )
    op.drop_constraint(op.f("ck_payments_status_known"), "payments", type_="check")
    op.create_check_constraint(
        "status_known",
        "payments",
        "status IN ('pending', 'confirming', 'succeeded', 'refunded', 'failed')",
    )
    op.add_column("payments", sa.Column("failure_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("payments", "failure_reason")
    op.execute("UPDATE payments SET status = 'pending' WHERE status = 'confirming'")
    op.drop_constraint(op.f("ck_payments_status_known"), "payments", type_="check")
    op.create_check_constraint(
        "status_known", "payments", "status IN ('pending', 'succeeded', 'refunded', 'failed')"
    )
    op.drop_table("course_prices")
    op.drop_constraint(op.f("ck_courses_currency_iso"), "courses", type_="check")
    op.drop_column("courses", "currency")
