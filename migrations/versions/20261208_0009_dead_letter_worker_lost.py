"""dead_letters: a failure kind for a poison message

- `failure_kind` may be `worker_lost`: the process running the step died (SIGKILL: out
  of memory, a crash in a C library) as many times as POISON_WORKER_LOSSES allows, and
  the message was parked instead of being handed out again (tasks/poison.py). Existing
  letters keep their kind: none was parked so.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08 09:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = (
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


def _known(kinds: Sequence[str]) -> None:
    op.drop_constraint(op.f("ck_dead_letters_failure_kind_known"), "dead_letters", type_="check")
    op.create_check_constraint(
        "failure_kind_known",
        "dead_letters",
        "failure_kind IN ({})".format(", ".join(f"'{kind}'" for kind in kinds)),
    )


def upgrade() -> None:
    _known((*KINDS, "worker_lost"))


def downgrade() -> None:
    # The release before knew no such kind: its letters read as unexpected failures.
    op.execute(
        "UPDATE dead_letters SET failure_kind = 'unexpected' WHERE failure_kind = 'worker_lost'"
    )
    _known(KINDS)
