"""The ledger's own tables beside ``ledger_entries`` (registered on ``opsgate.store.models.metadata``).

- ``ledger_checkpoints``: every signed checkpoint, its note stored byte for byte and re-served as
  is, with the tree's frontier (``merkle.CompactRange``) so the next checkpoint only hashes
  new entries; ``size`` is the primary key, so no size is ever signed twice.
- ``ledger_anchor_records``: one row per checkpoint posted to an anchor, with the anchor's
  reference (the Discord message id, the anchor file's name).
- ``ledger_anchor_state``: per anchor, the largest size anchored; advanced only by
  compare-and-swap (``UPDATE ... WHERE anchored_size = <the value read>``).
- ``ledger_recoveries``: one row per intent the recovery job closed as ``interrupted``; the
  primary key on ``request_id`` stops two recovery jobs from closing one intent twice.

Checkpoints, anchor records and recoveries are append-only like the entries (see ``guards``).

Whoever writes to the database around the application can store any type in any column (SQLite
keeps a value's own storage class whatever the column's declared type), so readers of these
tables take each value through :func:`stored_int` / :func:`stored_bytes` / :func:`stored_text`,
never ``bytes(...)`` or ``int(...)`` on trust.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, LargeBinary, String, Table

from opsgate.ledger.errors import StoredValueError
from opsgate.store.models import metadata
from opsgate.store.types import UTCDateTime

ledger_checkpoints = Table(
    "ledger_checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root_hash", LargeBinary(32), nullable=False),
    Column("note", LargeBinary, nullable=False),
    Column("frontier", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

ledger_anchor_records = Table(
    "ledger_anchor_records",
    metadata,
    Column("anchor", String(64), primary_key=True),
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("reference", String(256), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

ledger_anchor_state = Table(
    "ledger_anchor_state",
    metadata,
    Column("anchor", String(64), primary_key=True),
    Column("anchored_size", BigInteger, nullable=False),
)

ledger_recoveries = Table(
    "ledger_recoveries",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("intent_seq", BigInteger, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)


_STORAGE = {int: "INTEGER", float: "REAL", str: "TEXT", bytes: "BLOB", type(None): "NULL"}


def storage_class(value: object) -> str:
    """The SQLite storage class of a value read back (``INTEGER``, ``REAL``, ``TEXT``, ``BLOB``,
    ``NULL``), or its Python type's name for anything else a driver returned."""
    return _STORAGE.get(type(value), type(value).__name__)


def stored_int(value: object, where: str, *, minimum: int | None = 0) -> int:
    """``value`` read from an integer column (``where``: ``"<table> row ..., column <name>"``)
    when it is an ``int`` of at least ``minimum`` (None: any); :class:`StoredValueError` naming
    ``where`` otherwise."""
    if type(value) is not int:
        raise StoredValueError(f"{where} holds {storage_class(value)}, not INTEGER")
    if minimum is not None and value < minimum:
        raise StoredValueError(f"{where} holds {value}, below {minimum}")
    return value


def stored_bytes(value: object, where: str, *, length: int | None = None) -> bytes:
    """``value`` read from a BLOB / bytea column when it is ``bytes`` (of exactly ``length``
    bytes when given); :class:`StoredValueError` naming ``where`` otherwise."""
    if type(value) is not bytes:
        raise StoredValueError(f"{where} holds {storage_class(value)}, not BLOB")
    if length is not None and len(value) != length:
        raise StoredValueError(f"{where} holds {len(value)} bytes, not {length}")
    return value


def stored_text(value: object, where: str) -> str:
    """``value`` read from a string column when it is a ``str``; :class:`StoredValueError`."""
    if type(value) is not str:
        raise StoredValueError(f"{where} holds {storage_class(value)}, not TEXT")
    return value
