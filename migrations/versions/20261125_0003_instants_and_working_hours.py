"""session lengths, trainer time zones and working hours, no overlapping bookings

How existing rows are converted:

- Every course gets `session_minutes` = 60 (what a session was taken to last).
- Every session gets `ends_at` = `starts_at` + its course's length.
- Every trainer gets the time zone UTC and working hours on all seven days from
  00:00 to the end of the day: before this revision a trainer could be booked at any time, and
  a conversion must not make a booked session fall outside the trainer's hours. An
  operator narrows them with `PATCH /trainers/{id}`, which moves what falls outside.
  New trainers start with Monday to Friday, 08:00 to 20:00.
- Scheduled sessions of one trainer that overlap (17:00 and 17:30 were allowed, and so
  were the same instant reached from two time zones) cannot stay under the new
  exclusion constraint: of each overlapping pair, the later-created session is
  cancelled, with a SESSION_CANCELLED event (reason `overlap_at_migration`) on its
  payment's timeline. A cancelled session does not count against the tier, so the next
  beat top-up books a replacement on a free date.
- The old uniqueness rules keyed on wall-clock times (one live allocation per trainer
  and `time_slot`; one session per trainer and `starts_at`) are replaced by the
  exclusion constraint, which compares real intervals.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OVERLAP = "ex_sessions_trainer_overlap"


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
    op.add_column(
        "courses",
        sa.Column("session_minutes", sa.SmallInteger(), server_default="60", nullable=False),
    )
    op.create_check_constraint(
        "session_minutes_range", "courses", "session_minutes BETWEEN 15 AND 240"
    )
    op.add_column(
        "trainers",
        sa.Column("timezone", sa.String(length=64), server_default="UTC", nullable=False),
    )
    op.create_table(
        "trainer_working_hours",
        sa.Column("trainer_id", sa.BigInteger(), nullable=False),
        sa.Column("weekday", sa.SmallInteger(), nullable=False),
        sa.Column("starts", sa.Time(), nullable=False),
        sa.Column("ends", sa.Time(), nullable=False),
        sa.CheckConstraint(
            "starts < ends", name=op.f("ck_trainer_working_hours_starts_before_ends")
        ),
        sa.CheckConstraint(
            "weekday BETWEEN 0 AND 6", name=op.f("ck_trainer_working_hours_weekday_iso")
        ),
        sa.ForeignKeyConstraint(
            ["trainer_id"],
            ["trainers.id"],
            name=op.f("fk_trainer_working_hours_trainer_id_trainers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("trainer_id", "weekday", name=op.f("pk_trainer_working_hours")),
    )
    op.execute(
        """
        INSERT INTO trainer_working_hours (trainer_id, weekday, starts, ends)
        SELECT t.id, d, time '00:00', time '23:59:59.999999'
        FROM trainers t CROSS JOIN generate_series(0, 6) AS d
        """
    )

    op.add_column("tutoring_sessions", sa.Column("ends_at", sa.DateTime(timezone=True)))
    op.execute(
        """
        UPDATE tutoring_sessions s
        SET ends_at = s.starts_at + make_interval(mins => c.session_minutes)
        FROM trainer_allocations a JOIN courses c ON c.id = a.course_id
        WHERE a.id = s.allocation_id
        """
    )
    op.alter_column("tutoring_sessions", "ends_at", nullable=False)
    op.create_check_constraint("starts_before_ends", "tutoring_sessions", "starts_at < ends_at")
    op.execute(
        """
        WITH clash AS (
            SELECT DISTINCT later.id
            FROM tutoring_sessions earlier
            JOIN tutoring_sessions later
              ON later.trainer_id = earlier.trainer_id
             AND later.id > earlier.id
             AND tstzrange(later.starts_at, later.ends_at)
                 && tstzrange(earlier.starts_at, earlier.ends_at)
            WHERE earlier.status = 'scheduled' AND later.status = 'scheduled'
        ), cancelled AS (
            UPDATE tutoring_sessions s SET status = 'cancelled'
            FROM clash WHERE s.id = clash.id
            RETURNING s.id, s.allocation_id, s.student_id, s.scheduled_date
        )
        INSERT INTO domain_events (correlation_id, student_id, event_type, payload)
        SELECT p.payment_id, c.student_id, 'SESSION_CANCELLED',
               jsonb_build_object('session_id', c.id, 'date', c.scheduled_date,
                                  'reason', 'overlap_at_migration')
        FROM cancelled c
        JOIN trainer_allocations a ON a.id = c.allocation_id
        JOIN student_course_purchases p ON p.id = a.purchase_id
        """
    )
    op.drop_index(
        "uq_sessions_trainer_moment",
        table_name="tutoring_sessions",
        postgresql_where=sa.text("status <> 'cancelled'"),
    )
    op.drop_index(
        "uq_allocations_live_trainer_slot",
        table_name="trainer_allocations",
        postgresql_where=sa.text("status IN ('approved', 'active')"),
    )
    op.create_index(
        "ix_sessions_trainer_scheduled_ends_at",
        "tutoring_sessions",
        ["trainer_id", "ends_at"],
        postgresql_where=sa.text("status = 'scheduled'"),
    )
    op.create_exclude_constraint(
        OVERLAP,
        "tutoring_sessions",
        ("trainer_id", "="),
        (sa.func.tstzrange(sa.column("starts_at"), sa.column("ends_at")), "&&"),
        using="gist",
        where=sa.text("status = 'scheduled'"),
    )


def downgrade() -> None:
    op.drop_constraint(OVERLAP, "tutoring_sessions")
    op.drop_index(
        "ix_sessions_trainer_scheduled_ends_at",
        table_name="tutoring_sessions",
        postgresql_where=sa.text("status = 'scheduled'"),
    )
    op.create_index(
        "uq_allocations_live_trainer_slot",
        "trainer_allocations",
        ["trainer_id", "time_slot"],
        unique=True,
        postgresql_where=sa.text("status IN ('approved', 'active')"),
    )
    op.create_index(
        "uq_sessions_trainer_moment",
        "tutoring_sessions",
        ["trainer_id", "starts_at"],
        unique=True,
        postgresql_where=sa.text("status <> 'cancelled'"),
    )
    op.drop_constraint(
        op.f("ck_tutoring_sessions_starts_before_ends"), "tutoring_sessions", type_="check"
    )
    op.drop_column("tutoring_sessions", "ends_at")
    op.drop_table("trainer_working_hours")
    op.drop_column("trainers", "timezone")
    op.drop_constraint(op.f("ck_courses_session_minutes_range"), "courses", type_="check")
    op.drop_column("courses", "session_minutes")
