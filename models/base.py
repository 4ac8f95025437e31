from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    BindParameter,
    DateTime,
    MetaData,
    Table,
    Update,
    bindparam,
    func,
    inspect,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.orm.attributes import set_committed_value

# Stable constraint names, so Alembic migrations and `alembic check` agree.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def created_at_column() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


@functools.cache
def _update_of(entity: type[Base], names: tuple[str, ...]) -> Update:
    """UPDATE <entity's table> SET <names> WHERE <its primary key>, built once per shape."""
    table: Table = entity.__table__  # type: ignore[assignment]
    (key,) = table.primary_key.columns
    columns: dict[Any, Any] = {table.c[name]: bindparam(f"new_{name}") for name in names}
    return update(table).where(key == bindparam("row_key")).values(columns)


def id_array(name: str) -> BindParameter[Any]:
    """A list of ids bound as one array parameter, for `column == any_(id_array(...))`:
    PostgreSQL reads an IN list as `= ANY` anyway, and an expanding IN is rendered afresh
    on every execution of a statement built once."""
    return bindparam(name, type_=ARRAY(BigInteger))


def write_now(session: Session, row: Base, **values: Any) -> None:
    """Write these columns of a loaded row in one prebuilt UPDATE, now, and keep the
    object in step (as if loaded so): the commit then has nothing to flush. An ORM
    attribute set costs a unit-of-work flush, a statement built at flush time and its
    cache key, on the steps' hot path (BENCHMARKS.md, "Issue 25, third cut")."""
    names = tuple(sorted(values))
    params = {f"new_{name}": values[name] for name in names}
    identity = inspect(row).identity
    assert identity is not None, "write_now writes a row that was loaded or flushed"
    session.execute(_update_of(type(row), names), {"row_key": identity[0], **params})
    for name, value in values.items():
        set_committed_value(row, name, value)
