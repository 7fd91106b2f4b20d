"""Tables of the security domain (on :data:`opsgate.store.models.metadata`).

``users``: one row per user (migration 0001) with its ``role``, ``password_hash`` (Argon2id PHC
string), ``email_ciphertext`` (AES-256-GCM field ciphertext, see :mod:`opsgate.security.crypto`)
and ``email_blind_index`` (HMAC-SHA256 of the normalised address, unique, for lookups by email;
the last three from migration 0005). Defined here only; :mod:`opsgate.security.users` reads and
writes it.

``encryption_keys``: the versioned key ring. ``wrapped`` is ``nonce(12) || AES-256-GCM(master key,
data key)``; ``purpose`` is ``data`` (field encryption, rotated) or ``index`` (blind index).

``refresh_tokens``: opaque refresh tokens by SHA-256 hash, grouped in rotation families (one per
login; the family id is the ``sid`` of that login's access tokens, refused once it is revoked:
:mod:`opsgate.security.revocations`).

``security_event_counts``: the security event counts per UTC day, kind and reason.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Date,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
)

from opsgate.store.models import metadata
from opsgate.store.types import UTCDateTime

users = Table(
    "users",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("password_hash", String(255), nullable=True),
    Column("email_ciphertext", LargeBinary, nullable=True),
    Column("email_blind_index", LargeBinary(32), nullable=True, unique=True),
)

encryption_keys = Table(
    "encryption_keys",
    metadata,
    Column("key_id", Integer, primary_key=True, autoincrement=False),
    Column("purpose", String(16), nullable=False),
    Column("wrapped", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("retired_at", UTCDateTime(), nullable=True),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("token_hash", LargeBinary(32), primary_key=True),
    Column("family_id", String(32), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("rotated_at", UTCDateTime(), nullable=True),
    Column("revoked_at", UTCDateTime(), nullable=True),
)
Index("ix_refresh_tokens_family", refresh_tokens.c.family_id)
Index("ix_refresh_tokens_user", refresh_tokens.c.user_id)
Index("ix_refresh_tokens_revoked", refresh_tokens.c.revoked_at)  # migration 0013: the revoked logins' range read

security_event_counts = Table(
    "security_event_counts",
    metadata,
    Column("day", Date, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("count", Integer, nullable=False),
    PrimaryKeyConstraint("day", "kind", "reason"),
)
"""One row per UTC day, kind and reason; ``count`` is the sum over every process (migration 0007,
fed by :mod:`opsgate.security.counts`)."""
