"""SQLAlchemy 2.0 models; Alembic (migrations/) owns the schema they describe."""

from models.base import Base, id_array, write_now
from models.catalogue import Course, CoursePrice, Student, Trainer, TrainerCourse, WorkingDay
from models.dead_letters import DeadLetter, DeadLetterStatus, FailureKind
from models.effects import Committed, WrittenEvent, defer_event, note_events, take_pending_events
from models.events import (
    DomainEvent,
    OutboxKind,
    OutboxMessage,
    ProcessedEvent,
    StepRun,
    traced,
)
from models.fulfilment import (
    HOLDING_STATUSES,
    Allocation,
    AllocationStatus,
    Hold,
    HoldStatus,
    Purchase,
    SessionStatus,
    TutoringSession,
)
from models.notifications import Notification, NotificationKind, NotificationStatus
from models.payments import TIERS, IdempotencyKey, Payment, PaymentStatus, WebhookEvent
from models.session import (
    Database,
    database_unreachable,
    execute_autocommit,
    lock_not_available,
)

__all__ = [
    "HOLDING_STATUSES",
    "TIERS",
    "Allocation",
    "AllocationStatus",
    "Base",
    "Committed",
    "Course",
    "CoursePrice",
    "Database",
    "DeadLetter",
    "DeadLetterStatus",
    "DomainEvent",
    "FailureKind",
    "Hold",
    "HoldStatus",
    "IdempotencyKey",
    "Notification",
    "NotificationKind",
    "NotificationStatus",
    "OutboxKind",
    "OutboxMessage",
    "Payment",
    "PaymentStatus",
    "ProcessedEvent",
    "Purchase",
    "SessionStatus",
    "StepRun",
    "Student",
    "Trainer",
    "TrainerCourse",
    "TutoringSession",
    "WebhookEvent",
    "WorkingDay",
    "WrittenEvent",
    "database_unreachable",
    "defer_event",
    "execute_autocommit",
    "id_array",
    "lock_not_available",
    "note_events",
    "take_pending_events",
    "traced",
    "write_now",
]
