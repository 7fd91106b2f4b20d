"""Inserting many rows of one table as one executemany, without SQLAlchemy's per-call work.

``conn.execute(table.insert(), rows)`` builds a new ``Insert``, computes its cache key, looks the
compiled statement up and, for every row, walks every bind parameter to build its DB-API
parameters: on the ledger writer's thread this was most of its Python time per governed call
(issue 21: ~0.6 ms of writer CPU per call, py-spy ``--gil``). :func:`insert_rows` sends the same
statement with the same parameters through :func:`opsgate.store.statements.run`: one ``Insert``
per table, compiled once per (dialect, column keys), each value through the bind processor
SQLAlchemy would apply, on the DB-API cursor, with the engine's NUL refusal and SQLAlchemy's
error classes. Rows the compiled statement would not take as they are (a column with a
Python-side default left out, keys in another order per row) go through ``conn.execute``, so no
row is ever written differently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from sqlalchemy import Connection, Insert, Table

from opsgate.store.statements import run


def insert_rows(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """``INSERT`` ``rows`` (column key -> value) into ``table`` in ``conn``'s transaction, as one
    executemany (one row: one execute), writing exactly what ``conn.execute(table.insert(),
    rows)`` writes and raising what it raises (SQLAlchemy's ``IntegrityError`` for a broken
    constraint, :class:`~opsgate.errors.InvalidInput` for a NUL in a text value). Nothing when
    ``rows`` is empty."""
    run(conn, _insert(table), rows)


@cache
def _insert(table: Table) -> Insert:
    """The one ``Insert`` of ``table`` (plans are cached by statement)."""
    return table.insert()
