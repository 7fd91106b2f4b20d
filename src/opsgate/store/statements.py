"""Running a SQLAlchemy Core statement on the DB-API cursor, compiled once (issue 21).

``conn.execute(statement, parameters)`` looks the statement's compiled form up by its cache key,
builds an execution context, walks every bind parameter, dispatches the engine's events and wraps
the cursor in a ``CursorResult``: ~15 us a statement on this machine against 1-2 us for the
DB-API cursor, and most of the ledger writer's Python time per governed call. :func:`run` and
:func:`fetch` send what SQLAlchemy would send, on the DB-API cursor of ``conn``'s connection
inside its transaction:

- the SQL the dialect's compiler makes of the statement for the parameters' keys, as
  ``Connection.execute`` compiles it (``column_keys`` = the sorted keys, ``for_executemany`` when
  there is more than one parameter set), compiled once per (dialect, statement, keys, many);
- each DB-API parameter as ``DefaultExecutionContext._init_compiled`` builds it: the caller's
  value for the bind's key (or name), else the bind's own value, passed through the compiled
  statement's bind processor; a tuple in positional order (SQLite's qmark), a dict by name
  (psycopg's pyformat);
- rows read as ``CursorResult`` reads them: each column through its type's result processor for
  the cursor description's type code (e.g. ``UTCDateTime`` on SQLite), as named tuples of the
  columns' keys (``row.seq``, ``row[0]``);
- the rowcount the DB-API cursor reports, which is what ``CursorResult.rowcount`` returns for an
  ``UPDATE`` or ``DELETE`` (for an executemany the sum over the parameter sets: sqlite3, and
  psycopg 3 since 3.1; for an ``INSERT`` SQLAlchemy only reports it with ``preserve_rowcount``);
- the engine's ``before_cursor_execute`` listeners, called as ``Connection._execute_context``
  calls them (``context`` None), so the NUL refusal of :mod:`opsgate.store.db` raises the same
  :class:`~opsgate.errors.InvalidInput` before the statement is sent, and a listener's
  replacement statement or parameters are what is sent; DB-API errors wrapped as SQLAlchemy
  wraps them (``DBAPIError.instance``: an ``IntegrityError`` stays one; the engine's
  ``hide_parameters``; a disconnect invalidates the connection, as
  ``Connection._handle_dbapi_exception`` does).

A statement with expanding ``IN`` parameters gets one plan per length of its lists, expanded
as SQLAlchemy expands it. A statement the plan cannot send as SQLAlchemy would (literal-execute
or tuple ``IN`` parameters, expanding ones in an executemany, Python-side defaults to fill in, a
required bind without a value, ``setinputsizes``, escaped bind names, multi-row ``VALUES``
batching, a connection outside a transaction, an engine that logs its statements (``echo``, the
``sqlalchemy.engine`` logger at INFO) or has ``after_cursor_execute`` or ``handle_error``
listeners) goes through ``conn.execute`` instead, so nothing is ever sent
differently. Statements are module constants:
plans are cached by the statement object. :func:`send` is the same for SQL without parameters
or rows (the ``BEGIN`` of every SQLite transaction), in place of ``conn.exec_driver_sql``.
"""

from __future__ import annotations

import keyword
import weakref
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Dialect
from sqlalchemy.engine.interfaces import BindTyping
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement


T = TypeVar("T")
Parameters = Mapping[str, Any] | Sequence[Mapping[str, Any]]
"""One parameter set (execute) or a list of them (executemany, each with the same keys in the
same order)."""
_Processor = Callable[[Any], Any]


@dataclass(slots=True)
class _Plan:
    """A compiled statement: its SQL; per DB-API parameter in order, its name, the caller's key
    (None: the bind's own value, already processed, in ``template``), the item of the caller's
    list for an element of an expanding ``IN`` (else None) and bind processor; and, for a
    statement returning rows, the row type and its columns' types."""

    sql: str
    names: tuple[str, ...]
    taken: tuple[tuple[int, str, int | None, _Processor | None], ...]
    template: tuple[Any, ...]
    positional: bool
    row: Any
    types: tuple[Any, ...]
    processors: dict[tuple[Any, ...], tuple[_Processor | None, ...]] = field(default_factory=dict)

    def parameters(self, values: Mapping[str, Any]) -> Any:
        """The DB-API parameters of one parameter set."""
        out = list(self.template)
        for index, key, item, process in self.taken:
            value = values[key] if item is None else values[key][item]
            out[index] = value if process is None else process(value)
        return tuple(out) if self.positional else dict(zip(self.names, out, strict=True))

    def rows(self, cursor: Any, dialect: Dialect) -> list[Any]:
        """The cursor's rows, each column through its result processor for the description's
        type code (cached per tuple of type codes)."""
        fetched = cursor.fetchall()
        codes = tuple(column[1] for column in cursor.description)
        processors = self.processors.get(codes)
        if processors is None:
            processors = self.processors[codes] = tuple(
                type_._cached_result_processor(dialect, code)
                for type_, code in zip(self.types, codes, strict=True))
        make = self.row._make
        if not any(processors):
            return [make(row) for row in fetched]
        return [make([v if p is None else p(v) for p, v in zip(processors, row, strict=True)])
                for row in fetched]


@dataclass(slots=True)
class _Expanding:
    """A compiled statement with expanding ``IN`` parameters (``bindparam(..., expanding=True)``),
    whose SQL SQLAlchemy renders per execution for the lists' lengths: its plans by the lengths
    of the caller's lists (``expanding``, in order), each made as SQLAlchemy expands the
    statement (``_process_parameters_for_postcompile``)."""

    compiled: Any
    keys: tuple[str, ...]
    expanding: tuple[str, ...]
    plans: dict[tuple[int, ...], _Plan | None] = field(default_factory=dict)

    def sized(self, values: Mapping[str, Any]) -> _Plan | None:
        """The plan for the lengths of ``values``' lists."""
        lengths = tuple(len(values[key]) for key in self.expanding)
        try:
            return self.plans[lengths]
        except KeyError:
            compiled = self.compiled
            state = compiled._process_parameters_for_postcompile(compiled.construct_params(dict(values)))
            names = tuple(state.positiontup) if compiled.positional else tuple(state.parameters)
            items = {name: (bound, item) for bound, names in state.parameter_expansion.items()
                     for item, name in enumerate(names)}
            plan = self.plans[lengths] = _planned(compiled, state.statement, names, self.keys, items,
                                                  {**compiled._bind_processors, **state.processors})
            return plan


_PLANS: weakref.WeakKeyDictionary[
    Dialect, dict[tuple[Executable, tuple[str, ...], bool], _Plan | _Expanding | None]] = (
    weakref.WeakKeyDictionary())
"""Each engine's dialect's plans, by (statement, keys, many); dropped with the dialect."""


def run(conn: Connection, statement: Executable, parameters: Parameters = {}) -> int:  # never mutated
    """Execute ``statement`` (an insert, update, delete or text) with ``parameters`` (a mapping:
    one execute; a list of mappings: one executemany, nothing sent when empty) in ``conn``'s
    transaction and return the cursor's rowcount, as ``conn.execute(statement,
    parameters).rowcount`` would. Raises what that raises (see the module docstring)."""
    if isinstance(parameters, Mapping):
        return _execute(conn, statement, parameters, False, _rowcount, _rowcount_of)
    if len(parameters) <= 1:  # as SQLAlchemy: one parameter set is one execute
        return _execute(conn, statement, parameters[0], False, _rowcount, _rowcount_of) if parameters else 0
    return _execute(conn, statement, parameters, True, _rowcount, _rowcount_of)


def fetch(conn: Connection, statement: Executable, parameters: Mapping[str, Any] = {}) -> list[Any]:  # never mutated
    """Execute ``statement`` (a select, or DML with ``RETURNING``) with ``parameters`` in
    ``conn``'s transaction and return its rows as ``conn.execute(statement, parameters).all()``
    would: values processed by the columns' types, attributes named by the columns' keys
    (named tuples on the fast path, SQLAlchemy ``Row`` objects on the fallback). Raises what
    that raises (see the module docstring)."""
    return _execute(conn, statement, parameters, False, _rows, _all)


def _rowcount(_plan: _Plan, cursor: Any, _dialect: Dialect) -> int:
    return int(cursor.rowcount)


def _rowcount_of(result: Any) -> int:
    return int(result.rowcount)


def _rows(plan: _Plan, cursor: Any, dialect: Dialect) -> list[Any]:
    return plan.rows(cursor, dialect)


def _all(result: Any) -> list[Any]:
    return list(result.all())


def _execute(conn: Connection, statement: Executable, parameters: Any, many: bool,
             read: Callable[[_Plan, Any, Dialect], T], fallback: Callable[[Any], T]) -> T:
    """Send ``statement`` on the DB-API cursor and ``read`` it, or, without a plan (or rows to
    read without result columns), hand the statement to ``conn.execute`` and ``fallback``."""
    keys = tuple(parameters[0] if many else parameters)
    dialect = conn.dialect
    planned = _plan(dialect, statement, keys, many)
    plan = planned.sized(parameters) if isinstance(planned, _Expanding) else planned
    if (plan is None or not conn.in_transaction() or (read is _rows and plan.row is None)
            or conn._echo or conn.dispatch.after_cursor_execute or conn.dialect.dispatch.handle_error
            or (many and any(tuple(p) != keys for p in parameters))):
        return fallback(conn.execute(statement, [dict(p) for p in parameters] if many else parameters))
    params = [plan.parameters(p) for p in parameters] if many else plan.parameters(parameters)
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None  # in a transaction: connected
    cursor = dbapi_connection.cursor()
    sql = plan.sql
    try:
        for listener in conn.dispatch.before_cursor_execute:  # the NUL refusal, tests' probes
            sql, params = listener(conn, cursor, sql, params, None, many)
        try:
            if many:
                cursor.executemany(sql, params)
            else:
                cursor.execute(sql, params)
            return read(plan, cursor, dialect)
        except dialect.loaded_dbapi.Error as exc:
            raise _wrapped(conn, exc, dbapi_connection, cursor, sql, params, many) from exc
    finally:
        cursor.close()


def send(conn: Connection, sql: str) -> None:
    """Execute ``sql``, a statement without parameters whose rows nobody reads (``BEGIN
    IMMEDIATE``), on the DB-API cursor of ``conn``'s connection, in a transaction or not, as
    ``conn.exec_driver_sql(sql)`` sends it: through the engine's ``before_cursor_execute``
    listeners with empty parameters (``()`` for a positional paramstyle, else ``{}``), DB-API
    errors wrapped as the module docstring says. An engine that logs its statements or has
    ``after_cursor_execute`` or ``handle_error`` listeners gets ``conn.exec_driver_sql``. For the
    ``begin`` listener of :func:`opsgate.store.db.make_engine`, where ``exec_driver_sql`` took
    ~35 us of every SQLite transaction (issue 21)."""
    if conn._echo or conn.dispatch.after_cursor_execute or conn.dialect.dispatch.handle_error:
        conn.exec_driver_sql(sql)
        return
    dialect = conn.dialect
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None  # .connection connects
    cursor = dbapi_connection.cursor()
    params: Any = () if dialect.positional else {}
    try:
        for listener in conn.dispatch.before_cursor_execute:  # the NUL refusal, tests' probes
            sql, params = listener(conn, cursor, sql, params, None, False)
        try:
            cursor.execute(sql, params)
        except dialect.loaded_dbapi.Error as exc:
            raise _wrapped(conn, exc, dbapi_connection, cursor, sql, params, False) from exc
    finally:
        cursor.close()


def _wrapped(conn: Connection, exc: Any, dbapi_connection: Any, cursor: Any, sql: str,
             params: Any, many: bool) -> Exception:
    """The DB-API error ``exc`` of ``sql`` as SQLAlchemy raises it (``DBAPIError.instance``, the
    engine's ``hide_parameters``); a disconnect first invalidates ``conn``, as
    ``Connection._handle_dbapi_exception`` does."""
    dialect = conn.dialect
    lost = dialect.is_disconnect(exc, dbapi_connection, cursor)
    if lost:
        conn.invalidate(exc)
    return DBAPIError.instance(sql, params, exc, dialect.loaded_dbapi.Error,
                               hide_parameters=conn.engine.hide_parameters,
                               connection_invalidated=lost, dialect=dialect, ismulti=many)


def _plan(dialect: Dialect, statement: Executable, keys: tuple[str, ...], many: bool) -> _Plan | _Expanding | None:
    plans = _PLANS.get(dialect)
    if plans is None:
        plans = _PLANS.setdefault(dialect, {})
    try:
        return plans[(statement, keys, many)]
    except KeyError:
        plan = plans[(statement, keys, many)] = _compile(dialect, statement, keys, many)
        return plan


def _compile(dialect: Dialect, statement: Executable, keys: tuple[str, ...], many: bool) -> _Plan | _Expanding | None:
    """The plan of ``statement`` for parameter sets with ``keys`` on ``dialect``, compiled as
    ``Connection.execute`` compiles it (an :class:`_Expanding` when it has expanding ``IN``
    parameters), or None when its parameters need more than the bind processors (see the module
    docstring) or its rows cannot be named tuples."""
    if dialect.bind_typing is BindTyping.SETINPUTSIZES or len(set(keys)) != len(keys):
        return None
    compiled: Any = cast(ClauseElement, statement).compile(dialect=dialect, column_keys=sorted(keys), for_executemany=many)
    if (compiled.escaped_bind_names or compiled._insertmanyvalues or compiled.literal_execute_params
            or compiled.insert_prefetch or compiled.update_prefetch or compiled.schema_translate_map):
        return None
    if compiled.post_compile_params:  # expanding IN: SQLAlchemy refuses them in an executemany
        binds = compiled.post_compile_params
        if many or any(bind.type._is_tuple_type or (bind.key not in keys and compiled.bind_names[bind] in keys)
                       for bind in binds):
            return None
        return _Expanding(compiled, keys, tuple(bind.key for bind in binds if bind.key in keys))
    names = tuple(compiled.positiontup) if compiled.positional else tuple(compiled.bind_names.values())
    return _planned(compiled, compiled.string, names, keys, {}, compiled._bind_processors)


def _planned(compiled: Any, sql: str, names: tuple[str, ...], keys: tuple[str, ...],
             items: Mapping[str, tuple[str, int]], processors: Mapping[str, _Processor]) -> _Plan | None:
    """The plan sending ``sql`` with the DB-API parameters ``names`` (each a bind of
    ``compiled``, or in ``items`` an element of an expanding bind's list: (bind name, index)),
    each the caller's value for the bind's key (or name) when ``keys`` has it, else the bind's
    own, through ``processors`` (by parameter name); None when a required bind has no value."""
    taken: list[tuple[int, str, int | None, _Processor | None]] = []
    template: list[Any] = []
    for index, name in enumerate(names):
        bound, item = items.get(name, (name, None))
        bind = compiled.binds[bound]
        process = processors.get(name)
        key = bind.key if bind.key in keys else bound if bound in keys else None
        if key is None and (bind.required or bind.callable is not None):
            return None
        if key is not None:
            taken.append((index, key, item, process))
            template.append(None)
            continue
        value = bind.effective_value if item is None else bind.effective_value[item]
        template.append(value if process is None else process(value))
    columns = [(entry.keyname, entry.type) for entry in compiled._result_columns]
    row = _row_type([name for name, _ in columns])
    if columns and row is None:
        return None
    return _Plan(sql, names, tuple(taken), tuple(template), bool(compiled.positional),
                 row, tuple(type_ for _, type_ in columns))


def _row_type(names: list[str]) -> Any:
    """A named tuple type of the column ``names``, or None when they cannot name one (no
    columns, a duplicate, a name that is not an identifier, is a keyword or starts with ``_``)."""
    if not names or len(set(names)) != len(names) or not all(
            name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_")
            for name in names):
        return None
    return namedtuple("Row", names)  # noqa: PYI024  # names known at compile time
