"""Column types shared by every domain's tables.

:class:`UTCDateTime` is the one timestamp type: every ``DateTime`` column of opsgate uses it, so
code that reads a row gets timezone-aware UTC datetimes on both stores and never repairs them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, Dialect
from sqlalchemy.types import TypeDecorator


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
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise TypeError(f"UTCDateTime needs a timezone-aware datetime, got naive {value.isoformat()}")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
