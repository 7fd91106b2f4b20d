"""The versioned key ring for field encryption, stored wrapped in ``encryption_keys``.

Every replica shares the ring through the database. Each data key (``purpose="data"``) is a random
256-bit AES-GCM key with an integer ``key_id`` (1, 2, ...); the highest unretired one is current and
encrypts new values, older ones still decrypt until :mod:`opsgate.security.reencrypt` has moved
every row off them and they are retired. The blind-index key (``purpose="index"``) is separate and
not rotated (rotating it would need every indexed plaintext; see docs/security.md).

A rotation and a retirement are admin changes: each commits in the transaction of its ledger entry
(``key.rotate``, ``key.retire``; key ids only, never key material), as every admin change does
(docs/security.md). The ring's first data key and its index key are created on first use.

Keys are stored wrapped: ``nonce(12) || AES-256-GCM(master_key, key, aad="opsgate-key:<purpose>:<id>")``.
The master key comes from ``OPSGATE_MASTER_KEY`` (base64 of 32 bytes) or a file (mode 0600); it
never reaches the database. The file is created only for a database that holds no key ring yet
(:func:`provision_master_key`): a new master key beside keys wrapped under another one would make
every encrypted value unreadable, so a missing file then is refused (tester-priv F10).
:meth:`KeyRing.check` unwraps every active key at start-up and on every readiness probe.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Connection, Engine, Row, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from opsgate.clock import Clock
from opsgate.config import MASTER_KEY_BYTES, Settings, master_key_bytes
from opsgate.keyfile import random_key_file
from opsgate.ledger.writer import Ledger
from opsgate.security.errors import KeyRingError
from opsgate.security.models import encryption_keys
from opsgate.security.sanitizer import hold_secret
from opsgate.store.db import begin_write

KEY_BYTES = MASTER_KEY_BYTES
INDEX_KEY_ID = 0
RELOAD_S = 60.0


def master_key(settings: Settings) -> bytes:
    """The 32-byte master key from ``settings.master_key`` (base64; its ``op://`` reference
    resolved, else :class:`~opsgate.config.ConfigError`: :meth:`~opsgate.config.Settings.secret`)
    or the existing ``settings.master_key_file``. Raises :class:`KeyRingError` when neither is
    there (only :func:`provision_master_key` creates the file) or the key is not 32 base64 bytes."""
    raw = settings.secret("master_key")
    if raw is None and settings.master_key_file.exists():
        raw = hold_secret(settings.master_key_file.read_text().strip())
    elif raw is None:
        raise KeyRingError(f"no master key: OPSGATE_MASTER_KEY is unset and {settings.master_key_file} does not exist")
    try:
        return master_key_bytes(raw)
    except ValueError as exc:
        raise KeyRingError(f"OPSGATE_MASTER_KEY {exc}") from None


def provision_master_key(settings: Settings, engine: Engine) -> bytes:
    """The master key (:func:`master_key`), first creating ``settings.master_key_file`` (random,
    mode 0600) when no key is configured, the file is missing and ``encryption_keys`` is empty.
    Raises :class:`KeyRingError` when the file is missing but the database holds wrapped keys:
    they were wrapped under a master key that is gone, and a new one would unwrap none of them."""
    if settings.master_key is None and not settings.master_key_file.exists():
        with engine.connect() as conn:
            wrapped = conn.execute(select(func.count()).select_from(encryption_keys)).scalar_one()
        if wrapped:
            raise KeyRingError(
                f"the master key file {settings.master_key_file} is missing but the database holds {wrapped} "
                "keys wrapped under a master key; restore the file or set OPSGATE_MASTER_KEY (a new master "
                "key would make every encrypted value unreadable)")
        random_key_file(settings.master_key_file, KEY_BYTES)
    return master_key(settings)


def derived_key(settings: Settings, purpose: str) -> bytes:
    """A 32-byte key for ``purpose`` (e.g. ``"session-cookies"``, ``"backups"``) derived from the
    master key with HKDF-SHA256 (RFC 5869), so each use has its own key and only one is stored."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"opsgate:" + purpose.encode())
    return hkdf.derive(master_key(settings))


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """One ring entry: ``key_id``, ``purpose`` (data | index), ``created_at`` and ``retired_at``."""

    key_id: int
    purpose: str
    created_at: datetime
    retired_at: datetime | None


class KeyRing:
    """Data keys by id plus the blind-index key; loads (and on first use creates) them lazily."""

    def __init__(self, engine: Engine, master: bytes, clock: Clock) -> None:
        self._engine = engine
        self._wrap = AESGCM(master)
        self._clock = clock
        self._aeads: dict[int, AESGCM] = {}
        self._index_key: bytes | None = None
        self._versions: list[KeyVersion] = []
        self._current: int | None = None
        self._loaded_at = 0.0

    def current(self) -> tuple[int, AESGCM]:
        """The current data key's id and its AES-256-GCM instance (the ring is re-read when older
        than ``RELOAD_S``, so a rotation by another process is seen within a minute)."""
        if self._current is None or self._clock.monotonic() - self._loaded_at >= RELOAD_S:
            self.reload()
        assert self._current is not None
        return self._current, self._aeads[self._current]

    def aead(self, key_id: int) -> AESGCM:
        """The AES-256-GCM instance of data key ``key_id`` (reloads once for a key another replica
        added). Raises :class:`KeyRingError` for an unknown id."""
        aead = self._aeads.get(key_id)
        if aead is None:
            self.reload()
            aead = self._aeads.get(key_id)
        if aead is None:
            raise KeyRingError(f"no data key {key_id} in the key ring")
        return aead

    def index_key(self) -> bytes:
        """The 32-byte HMAC-SHA256 key of the blind index."""
        if self._index_key is None:
            self.reload()
        assert self._index_key is not None
        return self._index_key

    def versions(self) -> list[KeyVersion]:
        """Every key version, freshly read, ordered by id (the index key is id 0)."""
        self.reload()
        return list(self._versions)

    def check(self) -> None:
        """The start-up and readiness check of the master key: unwrap every active key stored,
        creating none (a database a rehearsal or a test merely opens gets no ring under a
        throwaway key). Raises :class:`KeyRingError` when one does not unwrap."""
        for r in self._rows():
            if r.retired_at is None:
                self._unwrap(r.key_id, r.purpose, r.wrapped)

    def reload(self) -> None:
        """Read the ring from the database, creating the first data key and the index key if absent,
        and unwrap every active key. Raises :class:`KeyRingError` when the master key does not
        unwrap an active key."""
        rows = self._rows()
        if not any(r.purpose == "data" for r in rows) or not any(r.purpose == "index" for r in rows):
            self._create_missing(rows)
            rows = self._rows()
        self._versions = [KeyVersion(r.key_id, r.purpose, r.created_at, r.retired_at) for r in rows]
        for r in rows:
            if r.retired_at is not None:
                continue
            key = self._unwrap(r.key_id, r.purpose, r.wrapped)
            if r.purpose == "index":
                self._index_key = key
            else:
                self._aeads[r.key_id] = AESGCM(key)
        active = [r.key_id for r in rows if r.purpose == "data" and r.retired_at is None]
        self._current = max(active)
        self._loaded_at = self._clock.monotonic()

    def age_s(self, key_id: int) -> float:
        """Seconds since key ``key_id`` was created (by the injected clock)."""
        created = next(v.created_at for v in self._versions if v.key_id == key_id)
        return (self._clock.now() - created).total_seconds()

    def rotate(self, ledger: Ledger, actor: str) -> int:
        """Add a new data key version and make it current, as ``actor``; returns its id.

        The key row is written in the transaction of its ledger entry ``key.rotate`` (``actor``,
        ``key_id`` the new key, ``before`` the key that was current), so concurrent rotations are
        serialised by the ledger's lock and each gets its own id. Raises
        :class:`~opsgate.ledger.errors.LedgerUnavailable` when the entry cannot be written; no key
        is added then.
        """
        self.reload()  # the first key exists before there is a second
        entry = ledger.append_sync("key.rotate", {"actor": actor}, work=self._add_data_key, amend=_rotation)
        self.reload()
        return entry.work_result[1]

    def retire(self, ledger: Ledger, actor: str, key_id: int,
               values_using: Callable[[Connection, int], int] | None = None) -> None:
        """Retire data key ``key_id`` as ``actor``: mark it retired and delete its material, in the
        transaction of its ledger entry ``key.retire`` (``actor``, ``key_id``). ``values_using``
        counts the stored values under a key on that transaction's connection
        (:func:`opsgate.security.reencrypt.retire_unused` passes it), so a key is never retired
        while a value needs it. Raises :class:`KeyRingError` for the current key, an unknown or
        retired key, or a key values still use, and
        :class:`~opsgate.ledger.errors.LedgerUnavailable`; nothing is written then."""
        def work(conn: Connection) -> None:
            rows = conn.execute(select(encryption_keys.c.key_id, encryption_keys.c.purpose,
                                       encryption_keys.c.retired_at)).all()
            active = [r.key_id for r in rows if r.purpose == "data" and r.retired_at is None]
            if key_id not in active:
                raise KeyRingError(f"no active data key {key_id} in the key ring")
            if key_id == max(active):
                raise KeyRingError("the current data key cannot be retired; rotate first")
            if values_using is not None and values_using(conn, key_id):
                raise KeyRingError(f"stored values still use data key {key_id}; run `opsgate keys reencrypt`")
            conn.execute(update(encryption_keys)
                         .where(encryption_keys.c.key_id == key_id, encryption_keys.c.purpose == "data")
                         .values(retired_at=self._clock.now(), wrapped=b""))

        ledger.append_sync("key.retire", {"actor": actor, "key_id": key_id}, work=work)
        self._aeads.pop(key_id, None)
        self.reload()

    def _add_data_key(self, conn: Connection) -> tuple[int, int]:
        """Work of :meth:`rotate`: insert the next key id as a data key; ``(before, new)`` ids."""
        rows = conn.execute(select(encryption_keys.c.key_id, encryption_keys.c.purpose,
                                   encryption_keys.c.retired_at)).all()
        before = max(r.key_id for r in rows if r.purpose == "data" and r.retired_at is None)
        key_id = max(r.key_id for r in rows) + 1
        conn.execute(insert(encryption_keys).values(self._wrapped(key_id, "data")))
        return before, key_id

    def _rows(self) -> list[Row[*tuple[Any, ...]]]:
        with self._engine.connect() as conn:
            return list(conn.execute(select(encryption_keys).order_by(encryption_keys.c.key_id)))

    def _create_missing(self, rows: list[Row[*tuple[Any, ...]]]) -> None:
        if not any(r.purpose == "index" for r in rows):
            self._insert(INDEX_KEY_ID, "index")
        if not any(r.purpose == "data" for r in rows):
            self._insert(1, "data")

    def _insert(self, key_id: int, purpose: str) -> None:
        """Insert a fresh wrapped key (nothing when another process took ``key_id`` first)."""
        try:
            with begin_write(self._engine) as conn:
                conn.execute(insert(encryption_keys).values(self._wrapped(key_id, purpose)))
        except IntegrityError:
            pass

    def _wrapped(self, key_id: int, purpose: str) -> dict[str, Any]:
        """The ``encryption_keys`` row of a fresh random key ``key_id``, wrapped under the master key."""
        key = secrets.token_bytes(KEY_BYTES)
        nonce = secrets.token_bytes(12)
        wrapped = nonce + self._wrap.encrypt(nonce, key, _wrap_aad(key_id, purpose))
        return {"key_id": key_id, "purpose": purpose, "wrapped": wrapped, "created_at": self._clock.now()}

    def _unwrap(self, key_id: int, purpose: str, wrapped: bytes) -> bytes:
        try:
            return self._wrap.decrypt(wrapped[:12], wrapped[12:], _wrap_aad(key_id, purpose))
        except InvalidTag:
            raise KeyRingError("the master key does not unwrap the key ring") from None


def _rotation(ids: tuple[int, int]) -> dict[str, int]:
    """The ``before`` and ``key_id`` fields of a ``key.rotate`` entry."""
    before, key_id = ids
    return {"key_id": key_id, "before": before}


def _wrap_aad(key_id: int, purpose: str) -> bytes:
    return f"opsgate-key:{purpose}:{key_id}".encode()
