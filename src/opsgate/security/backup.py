"""Encrypted backups: ``opsgate backup create | verify | restore``.

The database is copied consistently while the gateway runs -- SQLite through its online backup
API (``sqlite3.Connection.backup``), PostgreSQL with ``pg_dump --format=custom`` -- and the copy
is encrypted with AES-256-GCM in 1 MiB chunks using the STREAM construction (Hoang, Reyhanitabar,
Rogaway, Vizár 2015, as in Tink's streaming AEAD): chunk ``i`` is sealed with nonce
``prefix(7) || i (4, big-endian) || last (1)`` and the file header as associated data, so chunks
cannot be reordered, dropped or the file truncated without detection. File layout::

    b"OPSGATEBK1" | kind (1: b"S" SQLite, b"P" PostgreSQL) | nonce prefix (7) | sealed chunks

The key is derived from the master key (HKDF, purpose ``backups``), so a backup outlives data
key rotation but needs the same master key. :func:`verify` decrypts, restores into a scratch
database (a temporary SQLite file, or a fresh PostgreSQL database that is dropped afterwards) and
runs the ledger verification.

``pg_dump`` and ``pg_restore`` run in a minimal environment (:func:`child_env`): ``PATH``, the
locale, ``HOME`` and the operator's own libpq ``PG*`` settings, never a provider key or the master
key. The database password never appears on their command line (where ``ps`` shows it to every
user): it is written to a 0600 password file in the backup's private temporary directory and named
by ``PGPASSFILE`` (libpq's documented way, https://www.postgresql.org/docs/current/libpq-pgpass.html).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import struct
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import text
from sqlalchemy.engine import make_url

from opsgate.config import Settings
from opsgate.ledger.verify import VerifyReport, verify
from opsgate.security.errors import BackupError
from opsgate.security.keyring import derived_key
from opsgate.store.db import is_sqlite, make_engine, normalise_url

MAGIC = b"OPSGATEBK1"
CHUNK = 1 << 20
TAG = 16
PREFIX_BYTES = 7


@dataclass(frozen=True, slots=True)
class BackupReport:
    """What :func:`verify` found: ``kind`` (sqlite | postgresql), decrypted ``size`` in bytes and
    the ledger ``report`` of the restored copy."""

    kind: str
    size: int
    report: VerifyReport


def create(settings: Settings, out: Path) -> int:
    """Write an encrypted backup of ``settings.database_url`` to ``out`` (mode 0600); returns the
    plaintext size in bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "dump"
        kind = _dump(settings.database_url, plain, Path(tmp))
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with plain.open("rb") as src, os.fdopen(fd, "wb") as dst:
            _encrypt(derived_key(settings, "backups"), kind, src, dst)
        return plain.stat().st_size


def verify_backup(settings: Settings, backup: Path) -> BackupReport:
    """Decrypt ``backup``, restore it into a scratch database and verify its ledger."""
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "dump"
        kind = _decrypt_to(settings, backup, plain)
        with _scratch(settings.database_url, kind, Path(tmp)) as url:
            _load(kind, plain, url, Path(tmp))
            engine = make_engine(url)
            try:
                report = verify(engine)
            finally:
                engine.dispose()
        return BackupReport("sqlite" if kind == b"S" else "postgresql", plain.stat().st_size, report)


def restore(settings: Settings, backup: Path, target_url: str) -> None:
    """Restore ``backup`` into ``target_url`` (a SQLite file is replaced page by page through the
    backup API; a PostgreSQL database gets ``pg_restore --clean --if-exists``)."""
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "dump"
        kind = _decrypt_to(settings, backup, plain)
        if (kind == b"S") != is_sqlite(target_url):
            raise BackupError("the backup and the target are different kinds of database")
        _load(kind, plain, target_url, Path(tmp))


def _dump(url: str, plain: Path, tmp: Path) -> bytes:
    if is_sqlite(url):
        source = sqlite3.connect(_sqlite_path(url))
        target = sqlite3.connect(plain)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        return b"S"
    conninfo, env = _libpq(url, tmp)
    _run(["pg_dump", "--format=custom", "--no-owner", "--no-privileges", f"--file={plain}",
          f"--dbname={conninfo}"], env)
    return b"P"


def _sqlite_path(url: str) -> str:
    """The database file of a SQLite URL."""
    path = make_url(url).database
    if not path:
        raise BackupError("the SQLite database URL names no file")
    return path


def _load(kind: bytes, plain: Path, url: str, tmp: Path) -> None:
    if kind == b"S":
        source = sqlite3.connect(plain)
        target = sqlite3.connect(_sqlite_path(url))
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        return
    conninfo, env = _libpq(url, tmp)
    _run(["pg_restore", "--clean", "--if-exists", "--no-owner", "--no-privileges",
          "--single-transaction", f"--dbname={conninfo}", str(plain)], env)


@contextmanager
def _scratch(url: str, kind: bytes, tmp: Path) -> Iterator[str]:
    if kind == b"S":
        yield f"sqlite:///{tmp / 'scratch.db'}"
        return
    name = "opsgate_verify_" + uuid.uuid4().hex[:12]
    admin = make_engine(url).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(normalise_url(url)).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ")
"""Variables a PostgreSQL client tool inherits besides the ``PG*`` ones (see :func:`child_env`)."""


def child_env(environ: Mapping[str, str], passfile: Path | None) -> dict[str, str]:
    """The environment of a ``pg_dump`` / ``pg_restore`` child: :data:`KEPT_ENV` and the operator's
    libpq variables (``PGSSLMODE``, ``PGHOST``, ...) from ``environ``; with ``passfile`` it is named
    by ``PGPASSFILE`` and any inherited ``PGPASSWORD`` (which libpq would prefer) is dropped."""
    env = {k: v for k, v in environ.items() if k in KEPT_ENV or k.startswith("PG")}
    if passfile is not None:
        env.pop("PGPASSWORD", None)
        env["PGPASSFILE"] = str(passfile)
    return env


def _libpq(url: str, tmp: Path) -> tuple[str, dict[str, str]]:
    """The libpq URI of ``url`` without its password, and the child environment that carries the
    password in a ``.pgpass`` file (``*:*:*:*:password``, ``\\`` and ``:`` escaped) under ``tmp``."""
    parsed = make_url(normalise_url(url)).set(drivername="postgresql")
    passfile = None
    if parsed.password:
        passfile = tmp / f"pgpass-{uuid.uuid4().hex}"
        escaped = str(parsed.password).replace("\\", "\\\\").replace(":", "\\:")
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"*:*:*:*:{escaped}\n")
    conninfo = parsed._replace(password=None).render_as_string(hide_password=False)
    return conninfo, child_env(os.environ, passfile)


def _run(argv: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise BackupError(f"{argv[0]} failed with exit code {done.returncode}")


def _encrypt(key: bytes, kind: bytes, src: BinaryIO, dst: BinaryIO) -> None:
    prefix = secrets.token_bytes(PREFIX_BYTES)
    header = MAGIC + kind + prefix
    dst.write(header)
    aead, index = AESGCM(key), 0
    chunk = src.read(CHUNK)
    while True:
        following = src.read(CHUNK)
        last = not following
        dst.write(aead.encrypt(_nonce(prefix, index, last), chunk, header))
        if last:
            return
        chunk, index = following, index + 1


def _decrypt_to(settings: Settings, backup: Path, plain: Path) -> bytes:
    key = derived_key(settings, "backups")
    with backup.open("rb") as src, plain.open("wb") as dst:
        header = src.read(len(MAGIC) + 1 + PREFIX_BYTES)
        if len(header) != len(MAGIC) + 1 + PREFIX_BYTES or not header.startswith(MAGIC):
            raise BackupError("not an opsgate backup")
        kind, prefix = header[len(MAGIC) : len(MAGIC) + 1], header[len(MAGIC) + 1 :]
        if kind not in (b"S", b"P"):
            raise BackupError("not an opsgate backup")
        aead, index = AESGCM(key), 0
        sealed = src.read(CHUNK + TAG)
        while True:
            following = src.read(CHUNK + TAG)
            try:
                dst.write(aead.decrypt(_nonce(prefix, index, not following), sealed, header))
            except InvalidTag:
                raise BackupError("the backup is damaged, truncated or made with another master key") from None
            if not following:
                return kind
            sealed, index = following, index + 1


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)
