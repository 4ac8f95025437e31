"""Marshmallow schemas: what the API accepts and answers (and its OpenAPI document)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, time
from typing import Any, ClassVar
from zoneinfo import available_timezones

from marshmallow import (
    Schema,
    ValidationError,
    fields,
    post_load,
    pre_dump,
    pre_load,
    validate,
    validates_schema,
)

from domain.calendar import END_OF_DAY, is_valid_timezone
from domain.dead_letters import LetterFilter
from domain.errors import safe_reason
from models import TIERS
from tasks.redelivery import Redelivery

MAX_ID = 2**63 - 1
SLOT_PATTERN = r"^([01]\d|2[0-3]):[0-5]\d$"
_SLOT = re.compile(SLOT_PATTERN)


class TimeSlot(fields.Field):
    """A wall-clock time "HH:MM" (24-hour), in the student's timezone."""

    def _serialize(self, value: time | None, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else value.strftime("%H:%M")

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> time:
        if not isinstance(value, str) or not _SLOT.match(value):
            raise ValidationError('Must be a time "HH:MM" (24-hour).')
        return time(int(value[:2]), int(value[3:]))


class InputSchema(Schema):
    """Base of every request schema: PostgreSQL text cannot hold NUL characters."""

    @pre_load
    def _refuse_nul(self, data: Any, **kwargs: Any) -> Any:
        if _has_nul(data):
            raise ValidationError("Text may not contain NUL (\\u0000) characters.")
        return data


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):  # JSON objects, and webargs' query/header proxies
        return any(_has_nul(k) or _has_nul(value[k]) for k in value)
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def Id(**kwargs: Any) -> fields.Integer:
    return fields.Integer(strict=True, validate=validate.Range(1, MAX_ID), **kwargs)


NO_NUL = "^[^\u0000]*$"  # PostgreSQL text cannot hold NUL (InputSchema refuses it)


def Text(max_length: int, **kwargs: Any) -> fields.String:
    metadata = {"pattern": NO_NUL, **kwargs.pop("metadata", {})}
    return fields.String(validate=validate.Length(1, max_length), metadata=metadata, **kwargs)


class StrictBoolean(fields.Boolean):
    """JSON true or false only (marshmallow's Boolean also takes 0, 1, "yes"...)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Must be true or false.")
        return value


class Instant(fields.AwareDateTime):
    """An instant with its UTC offset, loaded as UTC: offsets are where the person is,
    and PostgreSQL takes none beyond ±15:59 (ISO 8601 allows up to ±23:59)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> datetime:
        instant = super()._deserialize(value, attr, data, **kwargs)
        try:
            return instant.astimezone(UTC)
        except OverflowError as exc:  # year 1 or 9999 shifted out of range
            raise ValidationError("Not a valid instant.") from exc


def _timezone(value: str) -> None:
    if not is_valid_timezone(value):
        raise ValidationError("Must be an IANA timezone name, e.g. Europe/Berlin.")


# The document lists every name the API accepts: schema-valid is API-valid.
TIMEZONES = sorted(name for name in available_timezones() if is_valid_timezone(name))


def TimezoneField(**kwargs: Any) -> fields.String:
    return fields.String(
        validate=_timezone, metadata={"enum": TIMEZONES, "example": "Europe/Berlin"}, **kwargs
    )


# --- catalogue ---------------------------------------------------------------------


class StudentIn(InputSchema):
    name = Text(200, required=True)
    email = fields.Email(required=True, validate=validate.Length(max=254))
    timezone = TimezoneField(required=True)


class StudentOut(Schema):
    id = fields.Integer()
    name = fields.String()
    email = fields.String()
    timezone = fields.String()


class PricesIn(InputSchema):
    tier_10 = fields.Integer(data_key="10", strict=True, validate=validate.Range(50, 100_000_000))
    tier_20 = fields.Integer(data_key="20", strict=True, validate=validate.Range(50, 100_000_000))
    tier_30 = fields.Integer(data_key="30", strict=True, validate=validate.Range(50, 100_000_000))


class CourseIn(InputSchema):
    title = Text(200, required=True)
    session_minutes = fields.Integer(strict=True, load_default=60, validate=validate.Range(15, 240))
    currency = fields.String(load_default="EUR", validate=validate.Regexp(r"^[A-Z]{3}$"))
    prices = fields.Nested(
        PricesIn,
        metadata={"description": "Amount in cents per tier; the defaults are 9900/18900/26900."},
    )


class CourseOut(Schema):
    id = fields.Integer()
    title = fields.String()
    currency = fields.String()
    session_minutes = fields.Integer()
    prices = fields.Method("_prices", metadata={"description": "Amount in cents per tier."})

    def _prices(self, course: Any) -> dict[str, int]:
        return {str(p.tier): p.amount_cents for p in course.prices}


class CoursePatch(InputSchema):
    """What an operator changes; what is left out stays. The currency is fixed when the
    course is created (a `currency` here is refused, as any unknown field). A payment
    keeps the amount and currency it was created at."""

    title = Text(200)
    session_minutes = fields.Integer(
        strict=True,
        validate=validate.Range(15, 240),
        metadata={"description": "Sessions already booked keep their length."},
    )
    prices = fields.Nested(
        PricesIn, metadata={"description": "Amount in cents per tier; only the tiers given change."}
    )


class CatalogueCourseOut(Schema):
    """A course as a client app reads the catalogue."""

    id = fields.Integer()
    title = fields.String()
    currency = fields.String()
    session_minutes = fields.Integer()
    prices = fields.Dict(
        keys=fields.String(validate=validate.OneOf([str(tier) for tier in TIERS])),
        values=fields.Integer(),
        metadata={"description": "Amount in cents per tier."},
    )
    purchasable = fields.Boolean(
        metadata={
            "description": "Whether it can be bought now: it has a price, and an active "
            "trainer who teaches it has room for another student."
        }
    )

    @pre_dump
    def _flatten(self, found: Any, **kwargs: Any) -> dict[str, Any]:
        """A domain CatalogueCourse: the course and whether it is purchasable."""
        course = found.course
        out = {
            name: getattr(course, name) for name in ("id", "title", "currency", "session_minutes")
        }
        prices = {str(p.tier): p.amount_cents for p in course.prices}
        return {**out, "prices": prices, "purchasable": found.purchasable}


class CourseQuery(InputSchema):
    page = fields.Integer(load_default=1, validate=validate.Range(1, 1_000_000))
    per_page = fields.Integer(load_default=50, validate=validate.Range(1, 100))


class CoursePage(Schema):
    items = fields.List(fields.Nested(CatalogueCourseOut))
    page = fields.Integer()
    per_page = fields.Integer()
    total = fields.Integer()


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = weekday (0 = Monday)


class DayEnd(TimeSlot):
    """A working day's end: "HH:MM", or "24:00" for the end of the day."""

    def _serialize(self, value: time | None, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        return "24:00" if value == END_OF_DAY else super()._serialize(value, attr, obj, **kwargs)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> time:
        if value == "24:00":
            return END_OF_DAY
        return super()._deserialize(value, attr, data, **kwargs)


QUARTERS = ("00", "15", "30", "45")
QUARTER_PATTERN = r"^([01]\d|2[0-3]):(00|15|30|45)$"
DAY_END_PATTERN = r"^(([01]\d|2[0-3]):(00|15|30|45)|24:00)$"


def _on_a_quarter(value: time) -> None:
    if value != END_OF_DAY and value.minute % 15:
        raise ValidationError("Working hours are on the quarter hour (:00, :15, :30, :45).")


def _later_than(hour: int, quarter: str) -> str:
    """A pattern for the day ends after hour:quarter ("24:00" included)."""
    later_hours = "|".join(f"{h:02d}" for h in range(hour + 1, 24))
    same_hour = "|".join(q for q in QUARTERS if q > quarter)
    parts = [f"{hour:02d}:({same_hour})"] if same_hour else []
    if later_hours:
        parts.append(f"({later_hours}):(00|15|30|45)")
    return "^(" + "|".join([*parts, "24:00"]) + ")$"


class WorkingDayIn(InputSchema):
    """A working day in the trainer's timezone, on the quarter hour (availability's
    grid: nothing between quarters can be offered), ending after it starts: one branch
    of the `anyOf` per start, so the document accepts exactly what the server does."""

    OPENAPI_RULES: ClassVar[dict[str, Any]] = {
        "anyOf": [
            {
                "properties": {
                    "starts": {"enum": [f"{hour:02d}:{quarter}"]},
                    "ends": {"pattern": _later_than(hour, quarter)},
                }
            }
            for hour in range(24)
            for quarter in QUARTERS
        ]
    }

    starts = TimeSlot(
        required=True,
        validate=_on_a_quarter,
        metadata={"type": "string", "pattern": QUARTER_PATTERN, "example": "09:00"},
    )
    ends = DayEnd(
        required=True,
        validate=_on_a_quarter,
        metadata={"type": "string", "pattern": DAY_END_PATTERN, "example": "17:30"},
    )

    @validates_schema
    def _in_order(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data["starts"] >= data["ends"]:
            raise ValidationError("A working day ends after it starts.", "ends")


# A day off, and only that (OpenAPI 3.0 has no null type): apispec writes a nullable
# nested schema as anyOf [{type: object, nullable: true}, $ref], which lets any object
# through, `{}` included, while the server requires both times.
NULL_ONLY = {"type": "object", "nullable": True, "enum": [None]}


class WorkingHoursIn(InputSchema):
    """The whole week, in the trainer's timezone: a day left out (or null) is a day off."""

    OPENAPI_RULES: ClassVar[dict[str, Any]] = {
        "properties": {
            day: {"anyOf": [NULL_ONLY, {"$ref": "#/components/schemas/WorkingDayIn"}]}
            for day in WEEKDAYS
        }
    }

    class Meta:
        ordered = True

    mon = fields.Nested(WorkingDayIn, allow_none=True)
    tue = fields.Nested(WorkingDayIn, allow_none=True)
    wed = fields.Nested(WorkingDayIn, allow_none=True)
    thu = fields.Nested(WorkingDayIn, allow_none=True)
    fri = fields.Nested(WorkingDayIn, allow_none=True)
    sat = fields.Nested(WorkingDayIn, allow_none=True)
    sun = fields.Nested(WorkingDayIn, allow_none=True)

    @post_load
    def _by_weekday(self, data: dict[str, Any], **kwargs: Any) -> dict[int, tuple[time, time]]:
        return {
            WEEKDAYS.index(day): (hours["starts"], hours["ends"])
            for day, hours in data.items()
            if hours is not None
        }


class TrainerIn(InputSchema):
    name = Text(200, required=True)
    email = fields.Email(required=True, validate=validate.Length(max=254))
    max_students = fields.Integer(strict=True, required=True, validate=validate.Range(1, 1000))
    course_ids = fields.List(Id(), required=True, validate=validate.Length(1, 100))
    is_active = StrictBoolean(load_default=True)
    timezone = TimezoneField(load_default="UTC")
    working_hours = fields.Nested(
        WorkingHoursIn,
        metadata={"description": "Default: Monday to Friday, 08:00 to 20:00."},
    )


class TrainerPatch(InputSchema):
    """What an operator changes; what is left out stays. Deactivating a trainer, or
    hours or a timezone that no longer hold a student's sessions, moves those students
    to other trainers (a reallocation chain each)."""

    max_students = fields.Integer(strict=True, validate=validate.Range(1, 1000))
    active = StrictBoolean()
    timezone = TimezoneField()
    working_hours = fields.Nested(WorkingHoursIn)


class WorkingDayOut(Schema):
    starts = TimeSlot(metadata={"type": "string"})
    ends = DayEnd(metadata={"type": "string"})


class TrainerOut(Schema):
    id = fields.Integer()
    name = fields.String()
    email = fields.String()
    max_students = fields.Integer()
    active_students = fields.Integer()
    is_active = fields.Boolean()
    timezone = fields.String()
    working_hours = fields.Dict(
        keys=fields.String(validate=validate.OneOf(WEEKDAYS)),
        values=fields.Nested(WorkingDayOut),
        metadata={"description": "In the trainer's timezone; a missing day is a day off."},
    )
    course_ids = fields.List(fields.Integer())
    reallocating = fields.List(
        fields.Integer(),
        metadata={"description": "PATCH: allocations this change sent to other trainers."},
    )

    @pre_dump
    def _flatten(self, found: Any, **kwargs: Any) -> dict[str, Any]:
        """A Trainer, or a domain TrainerChange (PATCH) that holds one."""
        trainer = getattr(found, "trainer", found)
        out = {
            name: getattr(trainer, name)
            for name in ("id", "name", "email", "max_students", "active_students", "is_active")
        }
        out["timezone"] = trainer.timezone
        out["working_hours"] = {WEEKDAYS[d.weekday]: d for d in trainer.working_hours}
        out["course_ids"] = sorted(c.id for c in trainer.courses)
        if hasattr(found, "reallocating"):
            out["reallocating"] = found.reallocating
        return out


# --- payments ------------------------------------------------------------------------


class PaymentIn(InputSchema):
    # The token's student; an operator names the student. Another student's id: 403.
    student_id = Id(metadata={"description": "Optional for a student: must be their own."})
    course_id = Id(required=True)
    tier = fields.Integer(strict=True, required=True, validate=validate.OneOf(TIERS))
    time_slot = TimeSlot(
        required=True, metadata={"type": "string", "pattern": SLOT_PATTERN, "example": "17:30"}
    )
    # The price is the catalogue's. A client that says what it expects to pay is
    # refused (409 amount_mismatch, with the catalogue's price) when that differs.
    amount_cents = fields.Integer(strict=True, validate=validate.Range(1, 100_000_000))
    currency = fields.String(validate=validate.Regexp(r"^[A-Z]{3}$"))


class ConfirmIn(InputSchema):
    """No fields: the provider, not the client, says whether the payment went through."""


class PaymentOut(Schema):
    id = fields.UUID()
    student_id = fields.Integer()
    course_id = fields.Integer()
    tier = fields.Integer()
    time_slot = TimeSlot(metadata={"type": "string"})
    amount_cents = fields.Integer()
    currency = fields.String()
    status = fields.String(
        metadata={"enum": ["pending", "confirming", "succeeded", "refunded", "failed"]}
    )
    provider_payment_id = fields.String(allow_none=True)
    failure_reason = fields.String(allow_none=True)
    created_at = fields.DateTime()
    confirmed_at = fields.DateTime(allow_none=True)


class CheckoutOut(PaymentOut):
    client_secret = fields.String(
        allow_none=True,
        metadata={"description": "The PaymentIntent's client secret, for the provider's SDK."},
    )
    hold_expires_at = fields.DateTime(
        metadata={"description": "Until when the time is held for this checkout to be paid."}
    )


class TrainerBrief(Schema):
    id = fields.Integer()
    name = fields.String()


class AllocationOut(Schema):
    id = fields.Integer()
    status = fields.String(
        metadata={"enum": ["approved", "active", "waiting", "completed", "cancelled"]}
    )
    time_slot = TimeSlot(metadata={"type": "string"})
    sessions_total = fields.Integer()
    trainer = fields.Nested(
        TrainerBrief, allow_none=True, metadata={"description": "null while waiting."}
    )


class PurchaseOut(Schema):
    id = fields.Integer()
    is_active = fields.Boolean()
    created_at = fields.DateTime()


class SessionOut(Schema):
    id = fields.Integer()
    date = fields.Date(attribute="scheduled_date", metadata={"description": "Student's local."})
    time = TimeSlot(attribute="scheduled_time", metadata={"type": "string"})
    starts_at = fields.DateTime()
    ends_at = fields.DateTime()
    status = fields.String()


class RescheduleIn(InputSchema):
    starts_at = Instant(
        required=True,
        metadata={
            "description": "The new start, an instant with its UTC offset, at least 24 hours "
            "ahead and inside the trainer's working hours.",
            "example": "2026-12-01T17:00:00+01:00",
        },
    )


def _safe_reason(letter: Any) -> str:
    return safe_reason(letter.failure_kind)


class Redelivered(fields.Raw):
    """The part of a dead letter's redelivery this field is named after (`args`,
    `kwargs`, `chain`), as the workers wrote it: read with their own reader."""

    def get_value(self, obj: Any, attr: str, accessor: Any = None, default: Any = None) -> Any:
        return getattr(Redelivery.from_json(obj.redelivery), attr)


class DeadLetterBrief(Schema):
    """What the payment's owner may read: an operator-safe reason, never the exception's
    class, message or traceback (those are in the admin-only dead-letter API)."""

    id = fields.Integer()
    task_name = fields.String()
    status = fields.String()
    reason = fields.Function(_safe_reason)
    replay_of = fields.Integer(allow_none=True)


class FulfilmentOut(Schema):
    state = fields.String(
        metadata={
            "enum": [
                "awaiting_payment",
                "verifying",
                "retrying",
                "confirmed",
                "finding_trainer",
                "waiting_for_trainer",
                "allocated",
                "scheduled",
                "needs_attention",
                "refunded",
                "failed",
            ]
        }
    )
    purchase = fields.Nested(PurchaseOut, allow_none=True)
    allocation = fields.Nested(AllocationOut, allow_none=True)
    sessions_scheduled = fields.Integer()
    upcoming_sessions = fields.List(fields.Nested(SessionOut))
    dead_letters = fields.List(fields.Nested(DeadLetterBrief))


class EventOut(Schema):
    type = fields.String(attribute="event_type")
    at = fields.DateTime(attribute="occurred_at")
    payload = fields.Dict()


class PaymentDetailOut(PaymentOut):
    fulfilment = fields.Nested(FulfilmentOut)
    timeline = fields.List(fields.Nested(EventOut))

    @pre_dump
    def _flatten(self, detail: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        payment = detail["payment"]
        flat = {name: getattr(payment, name) for name in PaymentOut().fields}
        return {**flat, "fulfilment": detail["fulfilment"], "timeline": detail["timeline"]}


# --- webhooks ------------------------------------------------------------------------


class WebhookOut(Schema):
    received = fields.Boolean()
    duplicate = fields.Boolean()
    handled = fields.Boolean(metadata={"description": "False for types Tutorflow ignores."})
    payment_id = fields.UUID(allow_none=True)
    status = fields.String(allow_none=True)


class ErrorBody(Schema):
    code = fields.String()
    message = fields.String()
    details = fields.Dict()


class ErrorOut(Schema):
    error = fields.Nested(ErrorBody)


# --- admin ---------------------------------------------------------------------------


class DeadLetterQuery(InputSchema):
    status = fields.String(validate=validate.OneOf(["open", "replayed", "discarded"]))
    task_name = Text(255)
    correlation_id = Text(64)
    page = fields.Integer(load_default=1, validate=validate.Range(1, 1_000_000))
    per_page = fields.Integer(load_default=50, validate=validate.Range(1, 100))


class DeadLetterOut(Schema):
    id = fields.Integer()
    status = fields.String()
    task_name = fields.String()
    task_id = fields.String()
    correlation_id = fields.String(allow_none=True)
    args = Redelivered(metadata={"type": "array", "items": {}})
    kwargs = Redelivered(metadata={"type": "object", "additionalProperties": {}})
    chain = Redelivered(
        metadata={"type": "array", "items": {}, "description": "Links that had not run yet."}
    )
    exception_type = fields.String()
    exception_message = fields.String()
    reason = fields.Function(_safe_reason, metadata={"description": "What the student reads."})
    traceback = fields.String()
    retries = fields.Integer()
    first_failed_at = fields.DateTime()
    last_failed_at = fields.DateTime()
    resolved_at = fields.DateTime(allow_none=True)
    replay_task_id = fields.String(
        allow_none=True, metadata={"description": "The task id its replay was published as."}
    )
    replay_of = fields.Integer(
        allow_none=True,
        metadata={"description": "The letter whose replay failed again and parked this one."},
    )
    failed_again_as = fields.List(
        fields.Integer(),
        metadata={"description": "Letters its replays parked: the replay failed again."},
    )


def flower_task_url(flower_url: str, task_id: str) -> str:
    """Flower's page of one task (it knows the task if it received its events)."""
    return f"{flower_url.rstrip('/')}/task/{task_id}"


class StepRunOut(Schema):
    task_id = fields.String(metadata={"description": "The Celery task id of this run."})
    started_at = fields.DateTime()
    finished_at = fields.DateTime(metadata={"description": "When its transaction committed."})
    duration_ms = fields.Integer()
    trace_id = fields.String(allow_none=True, metadata={"description": "null: tracing off."})
    flower_url = fields.String(metadata={"description": "The task in Flower."})


class ChainStepOut(Schema):
    step = fields.String(metadata={"example": "allocate_trainer"})
    task_name = fields.String()
    status = fields.String(
        metadata={
            "enum": ["done", "dead_lettered", "replayed", "discarded", "retrying", "not_run"],
            "description": "done: committed; else its newest dead letter's status "
            "(dead_lettered: open); retrying; not_run (yet, or the chain stopped before).",
        }
    )
    retries = fields.Integer(metadata={"description": "Retries on the timeline, all runs."})
    runs = fields.List(fields.Nested(StepRunOut), metadata={"description": "Committed runs."})
    dead_letter_ids = fields.List(fields.Integer())


class OperatorLetterOut(Schema):
    id = fields.Integer()
    status = fields.String(metadata={"enum": ["open", "replayed", "discarded"]})
    task_name = fields.String()
    task_id = fields.String()
    reason = fields.String(metadata={"description": "What the student reads."})
    exception_type = fields.String()
    exception_message = fields.String()
    retries = fields.Integer()
    first_failed_at = fields.DateTime()
    last_failed_at = fields.DateTime()
    resolved_at = fields.DateTime(allow_none=True)
    replay_of = fields.Integer(allow_none=True)
    replay_task_id = fields.String(allow_none=True)
    flower_url = fields.String(metadata={"description": "The failed task in Flower."})


LETTER_COLUMNS = tuple(set(OperatorLetterOut().fields) - {"reason", "flower_url"})


class PaymentChainOut(PaymentDetailOut):
    """The operator's view of one payment: the chain's steps in order, with runs,
    durations, retries, dead letters, trace ids and links to Flower."""

    steps = fields.List(fields.Nested(ChainStepOut))
    dead_letters = fields.List(fields.Nested(OperatorLetterOut))
    trace_ids = fields.List(
        fields.String(), metadata={"description": "Empty when tracing is off (TRACING)."}
    )
    flower_url = fields.String(metadata={"description": "FLOWER_PUBLIC_URL."})

    @pre_dump
    def _flatten(self, detail: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        flower = detail["flower_url"]
        letters = [
            {
                **{name: getattr(letter, name) for name in LETTER_COLUMNS},
                "reason": _safe_reason(letter),
                "flower_url": flower_task_url(flower, letter.task_id),
            }
            for letter in detail["dead_letters"]
        ]
        steps = [
            {
                "step": step.step,
                "task_name": step.task_name,
                "status": step.status,
                "retries": step.retries,
                "runs": [
                    {
                        "task_id": run.task_id,
                        "started_at": run.started_at,
                        "finished_at": run.finished_at,
                        "duration_ms": run.duration_ms,
                        "trace_id": run.trace_id,
                        "flower_url": flower_task_url(flower, run.task_id),
                    }
                    for run in step.runs
                ],
                "dead_letter_ids": [letter.id for letter in step.dead_letters],
            }
            for step in detail["steps"]
        ]
        return {
            **super()._flatten(detail, **kwargs),
            "steps": steps,
            "dead_letters": letters,
            "trace_ids": detail["trace_ids"],
            "flower_url": flower,
        }


LETTER_FILTERS = (
    "task_name",
    "exception_type",
    "failed_from",
    "failed_until",
    "course_id",
    "correlation_id",
)
_ANY_FILTER = [{"required": [name]} for name in LETTER_FILTERS]


class DeadLetterFilterIn(InputSchema):
    """Which open letters a bulk replay or discard takes (all filters must match): at
    least one filter, or `all: true` and none. A time range that ends before it starts
    matches no letter."""

    OPENAPI_RULES: ClassVar[dict[str, Any]] = {
        "anyOf": [
            {"anyOf": _ANY_FILTER, "properties": {"all": {"enum": [False]}}},
            {
                "required": ["all"],
                "properties": {"all": {"enum": [True]}},
                "not": {"anyOf": _ANY_FILTER},
            },
        ]
    }

    task_name = Text(255, metadata={"example": "tutorflow.pipeline.allocate_trainer"})
    exception_type = Text(
        255, metadata={"description": "Full name or class name.", "example": "NoTrainerAvailable"}
    )
    failed_from = Instant(metadata={"description": "Parked at or after."})
    failed_until = Instant(metadata={"description": "Parked before."})
    course_id = Id()
    correlation_id = Text(64, metadata={"description": "The payment id."})
    all = StrictBoolean(
        load_default=False, metadata={"description": "Required when no filter is given."}
    )
    dry_run = StrictBoolean(
        load_default=False, metadata={"description": "Only count and list; change nothing."}
    )

    @validates_schema
    def _narrowed(self, data: dict[str, Any], **kwargs: Any) -> None:
        filters = set(data) - {"all", "dry_run"}
        if not filters and not data.get("all"):
            raise ValidationError("Give at least one filter, or all: true.")
        if filters and data.get("all"):
            raise ValidationError("all: true takes no filters.")

    @post_load
    def _as_filter(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        filters = {k: v for k, v in data.items() if k not in ("all", "dry_run")}
        return {"filters": LetterFilter(**filters), "dry_run": data["dry_run"]}


class BulkOut(Schema):
    action = fields.String(metadata={"enum": ["replay", "discard"]})
    dry_run = fields.Boolean()
    matched = fields.Integer(metadata={"description": "Open letters matching the filter."})
    ids = fields.List(fields.Integer(), metadata={"description": "Matched (dry run) or acted on."})
    skipped = fields.List(
        fields.Integer(), metadata={"description": "Replayed or discarded meanwhile by another."}
    )


class DeadLetterPage(Schema):
    items = fields.List(fields.Nested(DeadLetterOut))
    page = fields.Integer()
    per_page = fields.Integer()
    total = fields.Integer()


# --- students --------------------------------------------------------------------------


class StudentBrief(Schema):
    id = fields.Integer()
    name = fields.String()
    timezone = fields.String()


class UpcomingSessionOut(Schema):
    id = fields.Integer()
    date = fields.Date(metadata={"description": "In the student's time zone."})
    time = TimeSlot(metadata={"type": "string", "example": "17:30"})
    starts_at = fields.DateTime()
    course = fields.String()
    trainer = fields.String()


class StudentCourseOut(Schema):
    course_id = fields.Integer()
    title = fields.String()
    payment_id = fields.String()
    tier = fields.Integer()
    time_slot = TimeSlot(metadata={"type": "string", "example": "17:30"})
    active = fields.Boolean()
    status = fields.String()
    trainer = fields.String(allow_none=True)
    sessions_done = fields.Integer()
    sessions_upcoming = fields.Integer()
    sessions_remaining = fields.Integer()
    next_session_at = fields.DateTime(allow_none=True)


class HomeOut(Schema):
    student = fields.Nested(StudentBrief)
    upcoming_sessions = fields.List(fields.Nested(UpcomingSessionOut))
    active_courses = fields.List(fields.Nested(StudentCourseOut))
    generated_at = fields.DateTime()


class LearningOut(Schema):
    student_id = fields.Integer()
    courses = fields.List(fields.Nested(StudentCourseOut))
    generated_at = fields.DateTime()


class StreamTicketOut(Schema):
    ticket = fields.String()
    expires_at = fields.DateTime()
    stream_url = fields.String()


class RecentQuery(InputSchema):
    # Query strings are text: these integers are parsed, not strict. A student's token
    # names the student; an operator gives student_id.
    student_id = fields.Integer(validate=validate.Range(1, MAX_ID))
    since = fields.Integer(load_default=0, validate=validate.Range(0, MAX_ID))


class RecentEventOut(Schema):
    id = fields.Integer()
    type = fields.String()
    payment_id = fields.String()
    at = fields.DateTime()
    payload = fields.Dict()


class RecentOut(Schema):
    events = fields.List(fields.Nested(RecentEventOut))
    next_since = fields.Integer()


# --- availability --------------------------------------------------------------------


class AvailabilityQuery(InputSchema):
    # The student's IANA zone: the times offered are local to it.
    timezone = TimezoneField(required=True)
    tier = fields.Integer(required=True, validate=validate.OneOf(TIERS))


class OfferOut(Schema):
    time_slot = TimeSlot(metadata={"type": "string", "example": "17:30"}, attribute="slot")
    places = fields.Integer(
        metadata={"description": "How many students could still book this time now."}
    )


class AvailabilityOut(Schema):
    course_id = fields.Integer()
    timezone = fields.String()
    tier = fields.Integer()
    session_minutes = fields.Integer()
    step_minutes = fields.Integer(
        metadata={"description": "The grid of times a student can choose from."}
    )
    times = fields.List(
        fields.Nested(OfferOut),
        metadata={
            "description": "Weekday times (in `timezone`) at which some trainer can serve "
            "every session of the tier, with the places at each; other times are refused "
            "at checkout (409 slot_unavailable)."
        },
    )
