"""Column types shared by every domain's tables.

:class:`UTCDateTime` is the one timestamp type: every ``DateTime`` column of opsgate uses it, so
code that reads a row gets timezone-aware UTC datetimes on both stores and never repairs them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Dialect
from sqlalchemy.dialects.sqlite import DATETIME as SQLITE_DATETIME
from sqlalchemy.types import TypeDecorator

_SQLITE_TEXT_LEN = len("2026-12-05 15:20:00.123456")


class UTCDateTime(TypeDecorator[datetime]):
    """A ``TIMESTAMP WITH TIME ZONE`` column that stores UTC and reads back aware UTC datetimes.

    Writing: an aware datetime in any zone is converted to UTC; a naive one raises ``TypeError``
    (opsgate's times come from an injected, timezone-aware Clock; a naive value is a bug).
    Reading: SQLite stores text without an offset and hands back naive datetimes, which were written
    in UTC, so they get ``tzinfo=UTC``; PostgreSQL hands back aware datetimes in the session's time
    zone, which are converted to UTC. Either way the result's ``tzinfo`` is ``datetime.UTC``.

    The schema type is ``DateTime(timezone=True)``, as the migrations create it (Alembic's
    autogenerate compares the two as equal). Follows SQLAlchemy's "Store Timezone Aware Timestamps
    as Timezone Naive UTC" recipe (docs: Custom Types, Augmenting Existing Types), keeping
    ``timezone=True`` for PostgreSQL.

    On SQLite, the value SQLAlchemy binds is the text its ``DATETIME`` stores,
    ``"%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"``
    of the UTC time (no offset); :meth:`bind_processor` makes that text in one step with
    ``datetime.isoformat`` (same digits, same padding) instead of two processors in a row, whose
    ``%``-formatting of a dict cost the ledger writer microseconds per value (issue 21). PostgreSQL keeps
    SQLAlchemy's processing (psycopg binds the aware datetime itself).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise TypeError(f"UTCDateTime needs a timezone-aware datetime, got naive {value.isoformat()}")
        return value.astimezone(UTC)

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        """SQLite with the default ``DATETIME`` storage format: :func:`sqlite_utc_text`; any other
        dialect or format: SQLAlchemy's (:meth:`process_bind_param`, then the impl's processor)."""
        impl = self.impl_instance.dialect_impl(dialect)
        if (dialect.name == "sqlite" and type(impl) is SQLITE_DATETIME
                and getattr(impl, "_storage_format", None) == SQLITE_DATETIME._storage_format):
            return sqlite_utc_text
        return super().bind_processor(dialect)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def sqlite_utc_text(value: datetime | None) -> str | None:
    """The text SQLite stores for ``value`` in a :class:`UTCDateTime` column: its UTC time as
    ``YYYY-MM-DD HH:MM:SS.ffffff`` (26 characters, years 1-9999 zero-padded to four digits), what
    :meth:`UTCDateTime.process_bind_param` followed by SQLAlchemy's SQLite ``DATETIME`` bind
    processor makes; None for None. Raises ``TypeError`` for a naive datetime, as
    :meth:`UTCDateTime.process_bind_param` does."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise TypeError(f"UTCDateTime needs a timezone-aware datetime, got naive {value.isoformat()}")
    return value.astimezone(UTC).isoformat(" ", "microseconds")[:_SQLITE_TEXT_LEN]
