"""Moving encrypted columns to the current data key, and retiring keys no row uses.

Every encrypted column is registered once as an :class:`EncryptedColumn` (``users.email`` here;
other domains call :func:`register` for theirs). :func:`reencrypt` walks each column's values that
are not under the current key, in primary key order, ``batch_size`` at a time: it decrypts and
re-encrypts a batch, then writes it back in the transaction of one ``key.reencrypt`` ledger entry
(the column, the key moved to, the keys moved from and how many values moved: ids and counts,
never key material or values); the UPDATE only applies if the value is still the one read, so a
concurrent write is never overwritten. ``progress`` is called after every batch. A value that does
not decrypt (tampered, truncated, naming a key the ring does not hold) is reported by table, row
and column as an :class:`Undecryptable` and left as it is; the others still move (tester-priv F10:
one bad row used to stop the whole run, so old keys could never be retired).
:func:`retire_unused` retires every non-current data key that no registered column still uses,
each in the transaction of its ``key.retire`` entry; an undecryptable value still names its key
in its header, so that key stays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Connection, Engine, Table, and_, func, select, update

from opsgate.ledger.writer import Ledger
from opsgate.security.crypto import FORMAT, HEADER, FieldCipher, key_id_of
from opsgate.security.errors import DecryptionFailed, KeyRingError
from opsgate.security.keyring import RELOAD_S, KeyRing
from opsgate.security.models import users


@dataclass(frozen=True, slots=True)
class EncryptedColumn:
    """A ciphertext column: its table, primary key column, ciphertext column and context prefix;
    the encryption context of a row is ``f"{prefix}:{primary key}"``."""

    table: Table
    pk: Column[str]
    column: Column[bytes]
    prefix: str

    def context(self, pk: object) -> str:
        """The AEAD context of the row with primary key ``pk``."""
        return f"{self.prefix}:{pk}"


@dataclass(frozen=True, slots=True)
class Progress:
    """Re-encryption progress of one column: ``total`` values were under another key than the
    current one when it started; ``scanned`` of them were read so far and ``moved`` to the current
    key (fewer when a concurrent write changed a value first)."""

    column: str
    scanned: int
    total: int
    moved: int


@dataclass(frozen=True, slots=True)
class Undecryptable:
    """A stored value that did not decrypt: ``table``, primary key column ``pk_column`` and value
    ``pk`` of its row, its ``column``, and ``reason`` (the :class:`DecryptionFailed` detail)."""

    table: str
    pk_column: str
    pk: str
    column: str
    reason: str

    def __str__(self) -> str:
        return f"{self.table}.{self.column} row {self.pk_column}={self.pk}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Reencrypted:
    """What :func:`reencrypt` did: ``moved`` values to the current key, and the ``undecryptable``
    ones it left in place (empty when every value moved)."""

    moved: int
    undecryptable: list[Undecryptable]


RETIRE_AFTER_S = 5 * RELOAD_S
USERS_EMAIL = EncryptedColumn(users, users.c.user_id, users.c.email_ciphertext, "users.email")
COLUMNS: list[EncryptedColumn] = [USERS_EMAIL]


def register(column: EncryptedColumn) -> None:
    """Add a domain's encrypted column so re-encryption and key retirement cover it."""
    if column not in COLUMNS:
        COLUMNS.append(column)


def reencrypt(
    engine: Engine,
    cipher: FieldCipher,
    keyring: KeyRing,
    ledger: Ledger,
    actor: str,
    *,
    batch_size: int = 500,
    progress: Callable[[Progress], None] | None = None,
) -> Reencrypted:
    """Re-encrypt every registered column's old-key values under the current key as ``actor``;
    returns how many values moved and which did not decrypt (those stay as they are and the run
    goes on). Each batch is written in the transaction of its ``key.reencrypt`` entry
    (``actor``, ``column``, ``key_id``, ``from``: the key ids moved off, ``moved``); a column or
    batch with nothing to move writes none. Raises
    :class:`~opsgate.ledger.errors.LedgerUnavailable` when an entry cannot be written (that batch
    stays as it was; the batches before it are done)."""
    current, _ = keyring.current()
    moved, undecryptable = 0, list[Undecryptable]()
    for col in COLUMNS:
        moved += _reencrypt_column(engine, cipher, col, current, ledger, actor, batch_size, progress, undecryptable)
    return Reencrypted(moved, undecryptable)


def _reencrypt_column(
    engine: Engine,
    cipher: FieldCipher,
    col: EncryptedColumn,
    current: int,
    ledger: Ledger,
    actor: str,
    batch_size: int,
    progress: Callable[[Progress], None] | None,
    undecryptable: list[Undecryptable],
) -> int:
    name = f"{col.table.name}.{col.column.name}"
    stale = and_(col.column.is_not(None), func.substr(col.column, 1, HEADER.size) != HEADER.pack(FORMAT, current))
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).where(stale)).scalar_one()
    scanned = moved = 0
    last = None
    while True:
        query = select(col.pk, col.column).where(stale).order_by(col.pk).limit(batch_size)
        if last is not None:
            query = query.where(col.pk > last)
        with engine.connect() as conn:
            rows = list(conn.execute(query))
        if not rows:
            break
        fresh = []
        for pk, blob in rows:
            try:
                fresh.append((pk, blob, cipher.encrypt(cipher.decrypt(blob, col.context(pk)), col.context(pk))))
            except DecryptionFailed as exc:
                undecryptable.append(Undecryptable(col.table.name, col.pk.name, str(pk), col.column.name, exc.detail))
        if fresh:
            moved += _write_batch(col, fresh, current, ledger, actor, name)
        last, scanned = rows[-1][0], scanned + len(rows)
        if progress is not None:
            progress(Progress(name, scanned, total, moved))
    return moved


def _write_batch(col: EncryptedColumn, fresh: list[tuple[Any, bytes, bytes]], current: int, ledger: Ledger,
                 actor: str, name: str) -> int:
    """Write ``fresh`` (``(pk, value read, value under key current)``) in the transaction of one
    ``key.reencrypt`` entry; returns how many rows still held the value read and moved."""
    def write(conn: Connection) -> dict[int, int]:
        """Write the batch; ``{old key id: values moved off it}``."""
        off: dict[int, int] = {}
        for pk, blob, value in fresh:
            stmt = update(col.table).where(col.pk == pk, col.column == blob).values({col.column.name: value})
            if conn.execute(stmt).rowcount:
                off[key_id_of(blob)] = off.get(key_id_of(blob), 0) + 1
        return off

    entry = ledger.append_sync("key.reencrypt", {"actor": actor, "column": name, "key_id": current},
                               work=write, amend=_moved)
    return sum(entry.work_result.values())


def _moved(off: dict[int, int]) -> dict[str, Any]:
    """The ``from`` and ``moved`` fields of a ``key.reencrypt`` entry."""
    return {"from": sorted(off), "moved": sum(off.values())}


def keys_in_use(engine: Engine) -> dict[int, int]:
    """``{key_id: number of stored values}`` over every registered column, by the key id in each
    value's header (an undecryptable value counts for the key it names; one without a readable
    header, truncated or of another format, names no key and is not counted)."""
    counts: dict[int, int] = {}
    for col in COLUMNS:
        header = func.substr(col.column, 1, HEADER.size)
        query = select(header, func.count()).where(col.column.is_not(None)).group_by(header)
        with engine.connect() as conn:
            for prefix, n in conn.execute(query):
                raw = bytes(prefix)
                if len(raw) == HEADER.size and raw[0] == FORMAT:
                    key_id = key_id_of(raw)
                    counts[key_id] = counts.get(key_id, 0) + n
    return counts


def retire_unused(engine: Engine, keyring: KeyRing, ledger: Ledger, actor: str) -> list[int]:
    """Retire, as ``actor``, every active, non-current data key that no stored value uses; returns
    their ids. Each retirement re-counts the key's values in the transaction of its ``key.retire``
    entry (:meth:`KeyRing.retire`), so a value written under it meanwhile keeps it.

    Nothing is retired until the current key is ``RETIRE_AFTER_S`` old: every replica reloads its
    ring at least every ``RELOAD_S`` seconds, so by then none still encrypts with an older key.
    Raises :class:`~opsgate.ledger.errors.LedgerUnavailable` when an entry cannot be written.
    """
    current, _ = keyring.current()
    if keyring.age_s(current) < RETIRE_AFTER_S:
        return []
    used = keys_in_use(engine)
    retired = []
    for version in keyring.versions():
        if version.purpose == "data" and version.retired_at is None and version.key_id != current:
            if not used.get(version.key_id):
                try:
                    keyring.retire(ledger, actor, version.key_id, values_using=values_using_key)
                except KeyRingError:
                    continue  # used again, or retired by another process, since keys_in_use
                retired.append(version.key_id)
    return retired


def values_using_key(conn: Connection, key_id: int) -> int:
    """How many stored values of the registered columns are under data key ``key_id``."""
    header = HEADER.pack(FORMAT, key_id)
    return sum(conn.execute(select(func.count()).where(func.substr(col.column, 1, HEADER.size) == header))
               .scalar_one() for col in COLUMNS)
