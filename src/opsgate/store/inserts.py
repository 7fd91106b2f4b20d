"""Inserting many rows of one table as one executemany, without SQLAlchemy's per-call work.

``conn.execute(table.insert(), rows)`` builds a new ``Insert``, computes its cache key, looks the
compiled statement up and, for every row, walks every bind parameter to build its DB-API
parameters: on the ledger writer's thread this was most of its Python time per governed call
(issue 21: ~0.6 ms of writer CPU per call, py-spy ``--gil``). :func:`insert_rows` sends the same
statement with the same parameters: the SQL compiled once per (dialect, table, column keys) by
the same compiler, each value passed through the same bind processor SQLAlchemy would apply (the
bind's type's ``dialect_impl(dialect).bind_processor(dialect)``), on the connection's
``exec_driver_sql``, which runs the engine's ``before_cursor_execute`` listeners (the NUL refusal
of :mod:`opsgate.store.db`) and wraps DB-API errors as SQLAlchemy's (an ``IntegrityError`` stays
one). Rows the compiled statement would not take as they are go the old way (see
:func:`insert_rows`), so no row is ever written differently.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Dialect, Table
from sqlalchemy.engine.interfaces import BindTyping

_Processor = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Plan:
    """A compiled ``INSERT``: its SQL, the row keys in parameter order and, for the keys whose
    type processes bound values, (index, processor)."""

    sql: str
    keys: tuple[str, ...]
    processed: tuple[tuple[int, _Processor], ...]
    positional: bool

    def parameters(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """The DB-API parameters of ``rows``: tuples for a positional paramstyle (SQLite's qmark),
        dicts for a named one (psycopg's pyformat)."""
        keys, processed = self.keys, self.processed
        out: list[Any] = []
        for row in rows:
            values = [row[key] for key in keys]
            for index, process in processed:
                values[index] = process(values[index])
            out.append(tuple(values) if self.positional else dict(zip(keys, values, strict=True)))
        return out


_PLANS: weakref.WeakKeyDictionary[Dialect, dict[tuple[Table, tuple[str, ...]], _Plan | None]] = (
    weakref.WeakKeyDictionary())
"""Each engine's dialect's plans, by (table, keys); dropped with the dialect."""


def insert_rows(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """``INSERT`` ``rows`` (column key -> value) into ``table`` in ``conn``'s transaction, as one
    executemany (one row: one execute), writing exactly what ``conn.execute(table.insert(),
    rows)`` writes and raising what it raises (SQLAlchemy's ``IntegrityError`` for a broken
    constraint, :class:`~opsgate.errors.InvalidInput` for a NUL in a text value).

    The fast path needs every row to have the same keys in the same order, each a column of
    ``table``, covering every column with a Python-side default (nothing for SQLAlchemy to fill
    in), and a dialect that binds parameters as SQLAlchemy does without ``setinputsizes``;
    otherwise the rows go through ``conn.execute(table.insert(), rows)``. Nothing when ``rows``
    is empty."""
    if not rows:
        return
    keys = tuple(rows[0])
    plan = _plan(conn.dialect, table, keys)
    if plan is None or any(tuple(row) != keys for row in rows):
        conn.execute(table.insert(), [dict(row) for row in rows])
        return
    conn.exec_driver_sql(plan.sql, plan.parameters(rows))


def _plan(dialect: Dialect, table: Table, keys: tuple[str, ...]) -> _Plan | None:
    plans = _PLANS.get(dialect)
    if plans is None:
        plans = _PLANS.setdefault(dialect, {})
    try:
        return plans[(table, keys)]
    except KeyError:
        plan = plans[(table, keys)] = _compile(dialect, table, keys)
        return plan


def _compile(dialect: Dialect, table: Table, keys: tuple[str, ...]) -> _Plan | None:
    """The plan of an ``INSERT`` of ``keys`` into ``table`` on ``dialect``, or None when the
    statement SQLAlchemy compiles for them binds anything but exactly those keys (a Python-side
    default to fill in, a key that is not a column) or its parameters need more than the
    processors (``setinputsizes``, escaped bind names) or SQLAlchemy would send it as
    multi-row ``VALUES`` batches (insertmanyvalues: only with RETURNING, or on a dialect that uses
    it without, neither of which is SQLite's or psycopg 3's) rather than one executemany."""
    columns = table.c
    if len(set(keys)) != len(keys) or any(key not in columns for key in keys):
        return None
    if dialect.bind_typing is BindTyping.SETINPUTSIZES:
        return None
    compiled: Any = table.insert().compile(dialect=dialect, column_keys=list(keys), for_executemany=True)
    if compiled.escaped_bind_names or compiled._insertmanyvalues:  # SQLAlchemy would batch VALUES
        return None
    names = tuple(compiled.positiontup) if compiled.positional else tuple(compiled.binds)
    if sorted(names) != sorted(keys):
        return None
    processed = []
    for index, name in enumerate(names):
        type_ = compiled.binds[name].type
        process = type_.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            processed.append((index, process))
    return _Plan(compiled.string, names, tuple(processed), bool(compiled.positional))
