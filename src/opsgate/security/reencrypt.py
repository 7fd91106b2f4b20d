"""Moving encrypted columns to the current data key, and retiring keys no row uses.

Every encrypted column is registered once as an :class:`EncryptedColumn` (``users.email`` here;
other domains call :func:`register` for theirs). :func:`reencrypt` walks each column in primary key
order, ``batch_size`` rows per transaction, decrypts values whose key id is not the current one and
writes them back under the current key (the UPDATE only applies if the value is still the one read,
so a concurrent write is never overwritten). ``progress`` is called after every batch.
:func:`retire_unused` retires every non-current data key that no registered column still uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Column, Engine, Table, func, select, update

from opsgate.security.crypto import HEADER, FieldCipher, key_id_of
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
    """Re-encryption progress of one column: rows ``scanned`` out of ``total``, ``moved`` to the
    current key."""

    column: str
    scanned: int
    total: int
    moved: int


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
    *,
    batch_size: int = 500,
    progress: Callable[[Progress], None] | None = None,
) -> int:
    """Re-encrypt every registered column's old-key values under the current key; returns how many
    values moved."""
    current, _ = keyring.current()
    moved = 0
    for col in COLUMNS:
        moved += _reencrypt_column(engine, cipher, col, current, batch_size, progress)
    return moved


def _reencrypt_column(
    engine: Engine,
    cipher: FieldCipher,
    col: EncryptedColumn,
    current: int,
    batch_size: int,
    progress: Callable[[Progress], None] | None,
) -> int:
    name = f"{col.table.name}.{col.column.name}"
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).where(col.column.is_not(None))).scalar_one()
    scanned = moved = 0
    last = None
    while True:
        query = select(col.pk, col.column).where(col.column.is_not(None)).order_by(col.pk).limit(batch_size)
        if last is not None:
            query = query.where(col.pk > last)
        with engine.begin() as conn:
            rows = list(conn.execute(query))
            for pk, blob in rows:
                if key_id_of(blob) != current:
                    fresh = cipher.encrypt(cipher.decrypt(blob, col.context(pk)), col.context(pk))
                    stmt = update(col.table).where(col.pk == pk, col.column == blob).values({col.column.name: fresh})
                    moved += conn.execute(stmt).rowcount
        if not rows:
            break
        last, scanned = rows[-1][0], scanned + len(rows)
        if progress is not None:
            progress(Progress(name, scanned, total, moved))
    return moved


def keys_in_use(engine: Engine) -> dict[int, int]:
    """``{key_id: number of stored values}`` over every registered column."""
    counts: dict[int, int] = {}
    for col in COLUMNS:
        header = func.substr(col.column, 1, HEADER.size)
        query = select(header, func.count()).where(col.column.is_not(None)).group_by(header)
        with engine.connect() as conn:
            for prefix, n in conn.execute(query):
                counts[key_id_of(bytes(prefix))] = counts.get(key_id_of(bytes(prefix)), 0) + n
    return counts


def retire_unused(engine: Engine, keyring: KeyRing) -> list[int]:
    """Retire every active, non-current data key that no stored value uses; returns their ids.

    Nothing is retired until the current key is ``RETIRE_AFTER_S`` old: every replica reloads its
    ring at least every ``RELOAD_S`` seconds, so by then none still encrypts with an older key.
    """
    current, _ = keyring.current()
    if keyring.age_s(current) < RETIRE_AFTER_S:
        return []
    used = keys_in_use(engine)
    retired = []
    for version in keyring.versions():
        if version.purpose == "data" and version.retired_at is None and version.key_id != current:
            if not used.get(version.key_id):
                keyring.retire(version.key_id)
                retired.append(version.key_id)
    return retired
