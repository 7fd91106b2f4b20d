"""Opaque refresh tokens: stored hashed, rotated on every use, reuse revokes the family.

A token is ``ogr_`` + 43 base64url characters (256 random bits). Only ``SHA-256(token)`` is
stored (a high-entropy token needs no slow hash). Every token belongs to a *family* started by
one login; :meth:`RefreshTokens.rotate` marks the presented token rotated and issues its successor
in the same family, atomically (``UPDATE ... WHERE rotated_at IS NULL``), so of two concurrent
rotations exactly one wins.

A successor is not random but ``ogr_`` + base64url(HMAC-SHA256(successor key, token)): the
successor key is derived from the master key, so only the server can compute it, and every process
computes the same successor for the same token.

Reuse detection (OAuth 2.0 Security BCP, RFC 9700 §4.14.2): presenting an already rotated token
revokes the whole family and fails, *except* within ``refresh_reuse_grace_s`` (default 10 s) of
its rotation, which is the loser of a concurrent refresh (two browser tabs, a retried request
whose response was lost): it gets the *same* successor again, as long as that successor is still
unused and unrevoked, so replays inside the window mint nothing new (one live token per family).
Once the successor was used, a replay is reuse. Revoked, expired and unknown tokens fail with 401
``unauthorized``.

The family id is the ``sid`` of the login's access tokens: every revocation here (logout, reuse,
:meth:`RefreshTokens.revoke_user`) is passed to ``on_revoke`` once it is committed
(:meth:`~opsgate.security.revocations.RevokedLogins.add`), so this process refuses those access
tokens at once; other processes read it from ``revoked_at``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, insert, select, update

from opsgate.clock import Clock
from opsgate.security.counts import COUNTS, REFRESH_REUSE, TOKEN_REJECTION
from opsgate.security.auth import Principal
from opsgate.security.errors import AuthFailure, Unauthorized
from opsgate.security.models import refresh_tokens
from opsgate.security.rls import service_scope, user_scope

PREFIX = "ogr_"


@dataclass(frozen=True, slots=True)
class Issued:
    """A new refresh token (shown once), its ``family_id``, ``user_id`` and ``expires_at`` (UTC)."""

    token: str
    family_id: str
    user_id: str
    expires_at: datetime


class RefreshTokens:
    """Issue, rotate and revoke refresh tokens in ``refresh_tokens``.

    On PostgreSQL the table has row-level security (:mod:`opsgate.security.rls`): :meth:`issue`
    and :meth:`revoke_user` run in :func:`user_scope` of that user; the others start from a
    presented token or family whose owner is not known yet, so they run in :func:`service_scope`."""

    def __init__(self, engine: Engine, clock: Clock, ttl_s: int, grace_s: float, *, successor_key: bytes,
                 on_revoke: Callable[[Iterable[str]], None] = lambda families: None) -> None:
        self._engine = engine
        self._on_revoke = on_revoke
        self._successor_key = successor_key
        self._clock = clock
        self._ttl = timedelta(seconds=ttl_s)
        self._grace = timedelta(seconds=grace_s)

    def issue(self, user_id: str) -> Issued:
        """Start a new family for ``user_id`` (a login) and return its first token."""
        with user_scope(self._engine, Principal(user_id, ("user",))) as conn:
            return self._insert(conn, user_id, uuid.uuid4().hex, PREFIX + secrets.token_urlsafe(32))

    def rotate(self, token: str) -> Issued:
        """Exchange ``token`` for its successor (the same one for a replay inside the grace window
        while the successor is unused). Raises :class:`Unauthorized` when it is unknown, expired,
        revoked, or reused otherwise (which revokes its family)."""
        digest = _hash(token)
        now = self._clock.now()
        with service_scope(self._engine) as conn:  # write first: the transaction holds the row lock
            won = conn.execute(
                update(refresh_tokens)
                .where(refresh_tokens.c.token_hash == digest, refresh_tokens.c.rotated_at.is_(None))
                .values(rotated_at=now)
            ).rowcount
            row = conn.execute(select(refresh_tokens).where(refresh_tokens.c.token_hash == digest)).first()
            if row is None or row.revoked_at is not None or now >= row.expires_at:
                COUNTS.add(TOKEN_REJECTION, AuthFailure.REFRESH_INVALID)
                raise Unauthorized(AuthFailure.REFRESH_INVALID)  # rolls the UPDATE back
            successor = self._successor(token)
            if won:
                return self._insert(conn, row.user_id, row.family_id, successor)
            if now - row.rotated_at < self._grace:
                expires_at = conn.execute(
                    select(refresh_tokens.c.expires_at).where(
                        refresh_tokens.c.token_hash == _hash(successor),
                        refresh_tokens.c.rotated_at.is_(None), refresh_tokens.c.revoked_at.is_(None))
                ).scalar()
                if expires_at is not None:
                    return Issued(successor, row.family_id, row.user_id, expires_at)
        self.revoke_family(row.family_id)
        COUNTS.add(REFRESH_REUSE, "family_revoked")
        raise Unauthorized(AuthFailure.REFRESH_REUSED)

    def revoke(self, token: str) -> bool:
        """Revoke the family of ``token`` (logout); False when the token is unknown."""
        with service_scope(self._engine) as conn:
            family = conn.execute(
                select(refresh_tokens.c.family_id).where(refresh_tokens.c.token_hash == _hash(token))
            ).scalar()
        if family is None:
            return False
        self.revoke_family(family)
        return True

    def family_active(self, family_id: str) -> bool:
        """True while ``family_id`` has an unrevoked, unexpired token (a live login)."""
        now = self._clock.now()
        with service_scope(self._engine) as conn:
            rows = conn.execute(
                select(refresh_tokens.c.expires_at)
                .where(refresh_tokens.c.family_id == family_id, refresh_tokens.c.revoked_at.is_(None))
            ).scalars()
            return any(now < expires_at for expires_at in rows)

    def revoke_family(self, family_id: str) -> None:
        """Revoke every token of ``family_id``, and with it the login's access tokens."""
        with service_scope(self._engine) as conn:
            conn.execute(
                update(refresh_tokens)
                .where(refresh_tokens.c.family_id == family_id, refresh_tokens.c.revoked_at.is_(None))
                .values(revoked_at=self._clock.now())
            )
        self._on_revoke([family_id])

    def revoke_user(self, user_id: str) -> None:
        """Revoke every refresh token of ``user_id`` (role change, password change), and with them
        the access tokens of every login of the user."""
        live = (refresh_tokens.c.user_id == user_id, refresh_tokens.c.revoked_at.is_(None))
        with user_scope(self._engine, Principal(user_id, ("user",))) as conn:
            families = conn.execute(select(refresh_tokens.c.family_id).where(*live).distinct()).scalars().all()
            conn.execute(update(refresh_tokens).where(*live).values(revoked_at=self._clock.now()))
        self._on_revoke(families)

    def _successor(self, token: str) -> str:
        mac = hmac.new(self._successor_key, token.encode(), hashlib.sha256).digest()
        return PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def _insert(self, conn: Connection, user_id: str, family_id: str, token: str) -> Issued:
        now = self._clock.now()
        conn.execute(
            insert(refresh_tokens).values(
                token_hash=_hash(token),
                family_id=family_id,
                user_id=user_id,
                created_at=now,
                expires_at=now + self._ttl,
            )
        )
        return Issued(token, family_id, user_id, now + self._ttl)


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
