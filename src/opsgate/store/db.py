"""Engines and migrations for the two supported stores.

SQLite (the embedded default) runs in WAL mode with a busy timeout so several processes can share
one file; PostgreSQL URLs (``postgresql://`` or ``postgresql+psycopg://``) use psycopg 3.

Both refuse, before the statement runs, a text parameter that holds a NUL character
(:func:`_refuse_nul`, :class:`~opsgate.errors.InvalidInput`, 422): PostgreSQL ``text`` cannot hold
one (psycopg's ``DataError``, a 500 through any path that reached it: a ``%00`` in a route's path,
a form field) while SQLite stores it, so the same input would be a 500 on one store and kept on
the other. Request bodies are refused earlier, naming the field (:mod:`opsgate.bodies`); this is
the one rule for every other way text reaches a store. The transaction it aborts is rolled back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, closing, contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from opsgate.config import ConfigError, Settings
from opsgate.errors import InvalidInput
from opsgate.store.statements import send

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_WRITES = "opsgate_writes"  # the execution option begin_write sets: BEGIN IMMEDIATE on SQLite


def normalise_url(url: str) -> str:
    """Map ``postgres://`` and ``postgresql://`` to the psycopg 3 driver; leave others alone."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    """True for ``sqlite://`` URLs."""
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str, *, synchronous: str = "FULL") -> Engine:
    """Create an engine. SQLite connections get WAL, ``busy_timeout`` 30 s and ``synchronous``;
    the SQLite file's directory is created (:class:`ConfigError` when it cannot be)."""
    url = normalise_url(url)
    if not is_sqlite(url):
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
        event.listen(engine, "before_cursor_execute", _refuse_nul)
        return engine
    path = make_url(url).database
    if path and path != ":memory:":
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"SQLite database {path}: cannot create its directory "
                              f"{Path(path).parent}: {exc.strerror or type(exc).__name__}") from None
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    event.listen(engine, "before_cursor_execute", _refuse_nul)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: object) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (BEGIN IMMEDIATE for writers)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute(f"PRAGMA synchronous={'NORMAL' if synchronous == 'NORMAL' else 'FULL'}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:  # on the DB-API cursor, as exec_driver_sql sends it
        send(conn, "BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITES) else "BEGIN")

    return engine


NUL_REFUSED = "A text value must not contain a NUL character (U+0000), which the database cannot store"


def _refuse_nul(_conn: Connection, _cursor: Any, _statement: str, parameters: Any, _context: Any,
                executemany: bool) -> None:
    """``before_cursor_execute``: :class:`InvalidInput` (422, :data:`NUL_REFUSED`, no value quoted)
    when a ``str`` among the statement's DB-API ``parameters`` (a mapping or a sequence; a list of
    them for ``executemany``) holds ``"\\x00"``. See the module docstring."""
    for row in parameters if executemany else (parameters,):
        values = row.values() if isinstance(row, Mapping) else (row or ())
        for value in values:
            if type(value) is str and "\x00" in value:
                raise InvalidInput(NUL_REFUSED)


def begin_write(engine: Engine) -> AbstractContextManager[Connection]:
    """``engine.begin()`` for a transaction that writes: a context manager yielding a connection
    in a transaction, committed when the block ends, rolled back when it raises.

    On SQLite the transaction starts with ``BEGIN IMMEDIATE``: it takes the write lock first,
    waiting up to ``busy_timeout`` for another writer. A plain ``BEGIN`` that reads and then writes
    fails at its first write with an immediate "database is locked" (``SQLITE_BUSY_SNAPSHOT``, no
    busy wait) whenever another connection committed after its read: a WAL reader cannot become a
    writer on a stale snapshot (https://www.sqlite.org/wal.html, "Sometimes Queries Return
    SQLITE_BUSY In WAL Mode"; https://www.sqlite.org/lang_transaction.html). On PostgreSQL it is
    ``engine.begin()``.
    """
    return engine.execution_options(**{_WRITES: True}).begin()


def writing(conn: Connection) -> Connection:
    """``conn`` (the same object, its execution options changed) with every transaction it begins
    starting as :func:`begin_write`'s do: ``BEGIN IMMEDIATE`` on SQLite, the write lock taken by
    the ``BEGIN`` itself (waiting up to ``busy_timeout``); no change on PostgreSQL. For a
    connection held open for writes (the ledger writer's)."""
    return conn.execution_options(**{_WRITES: True})


class Savepoint:
    """The savepoint :func:`savepoint` opened; :meth:`rollback` marks what ran in it to be undone
    when the block ends."""

    def __init__(self) -> None:
        self.rolled_back = False

    def rollback(self) -> None:
        """Undo, when the block ends, everything the block wrote."""
        self.rolled_back = True


@contextmanager
def savepoint(conn: Connection) -> Iterator[Savepoint]:
    """What ``conn.begin_nested()`` does, for statements on the request path: ``SAVEPOINT`` on
    entry, ``RELEASE SAVEPOINT`` on leaving, preceded by ``ROLLBACK TO SAVEPOINT`` when the block
    called :meth:`Savepoint.rollback` or raised (the exception then propagates). The same SQL on
    SQLite and PostgreSQL, sent on the DB-API cursor: SQLAlchemy names each of its savepoints anew
    (``sa_savepoint_N``) and compiles both statements on every call, ~260 us a pair on this
    machine against ~5 us here (issue 21). Savepoints of this function nest."""
    with closing(conn.connection.cursor()) as cursor:
        cursor.execute("SAVEPOINT opsgate")
        point = Savepoint()
        try:
            yield point
        except BaseException:
            cursor.execute("ROLLBACK TO SAVEPOINT opsgate")
            cursor.execute("RELEASE SAVEPOINT opsgate")
            raise
        if point.rolled_back:
            cursor.execute("ROLLBACK TO SAVEPOINT opsgate")
        cursor.execute("RELEASE SAVEPOINT opsgate")


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at the packaged migrations and ``url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str) -> None:
    """Apply every pending migration on every branch (``alembic upgrade heads``; each domain
    package owns a branch of revisions rooted at 0001)."""
    command.upgrade(alembic_config(url), "heads")


def migrations_current(engine: Engine) -> bool:
    """True when the database is at the head revision of the packaged migrations."""
    script = ScriptDirectory.from_config(alembic_config(str(engine.url)))
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_heads()
    return set(current) == set(script.get_heads())


def connect_failure(exc: BaseException, url: str) -> ConfigError | None:
    """The :class:`ConfigError` for ``exc`` when it was raised while *connecting* to ``url``
    (``OPSGATE_DATABASE_URL``'s value), else None. SQLAlchemy wraps a DB-API error of the connect
    step with no statement: server down, wrong password, a SQLite file that cannot be opened. Its one line names ``OPSGATE_DATABASE_URL``, the URL
    without its password and the driver's first line, e.g. ``OPSGATE_DATABASE_URL
    (postgresql+psycopg://u@127.0.0.1:1/db): cannot connect: connection failed: ...
    Connection refused``. Callers pass the line through the sanitizer before printing it."""
    if not isinstance(exc, DBAPIError) or exc.statement is not None:
        return None
    shown = make_url(normalise_url(url)).set(password=None).render_as_string(hide_password=False)
    reason = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
    return ConfigError(f"OPSGATE_DATABASE_URL ({shown}): cannot connect: {reason}")


def open_database(settings: Settings) -> Engine:
    """The engine for ``settings.database_url``, migrated first when ``settings.auto_migrate``;
    a migration that cannot connect raises :func:`connect_failure`'s :class:`ConfigError`
    showing this URL (the command line's boundary only knows ``OPSGATE_DATABASE_URL``'s, and
    ``opsgate rehearse --database-url`` opens another)."""
    if settings.auto_migrate:
        try:
            upgrade(settings.database_url)
        except DBAPIError as exc:
            if (failure := connect_failure(exc, settings.database_url)) is None:
                raise
            raise failure from None
    return make_engine(settings.database_url, synchronous=settings.ledger_synchronous)
