"""SQLAlchemy 2.0 models; Alembic (migrations/) owns the schema they describe."""

from models.base import Base
from models.catalogue import Course, Student, Trainer, TrainerCourse
from models.dead_letters import DeadLetter, DeadLetterStatus
from models.events import DomainEvent, OutboxMessage, ProcessedEvent
from models.fulfilment import (
    HOLDING_STATUSES,
    Allocation,
    AllocationStatus,
    Purchase,
    SessionStatus,
    TutoringSession,
)
from models.payments import TIERS, IdempotencyKey, Payment, PaymentStatus, WebhookEvent
from models.session import SessionFactory, after_commit, get_engine, init_engine, open_session

__all__ = [
    "HOLDING_STATUSES",
    "TIERS",
    "Allocation",
    "AllocationStatus",
    "Base",
    "Course",
    "DeadLetter",
    "DeadLetterStatus",
    "DomainEvent",
    "IdempotencyKey",
    "OutboxMessage",
    "Payment",
    "PaymentStatus",
    "ProcessedEvent",
    "Purchase",
    "SessionFactory",
    "SessionStatus",
    "Student",
    "Trainer",
    "TrainerCourse",
    "TutoringSession",
    "WebhookEvent",
    "after_commit",
    "get_engine",
    "init_engine",
    "open_session",
]
