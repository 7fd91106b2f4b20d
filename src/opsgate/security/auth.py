"""Access tokens: JWT (RFC 7519) signed HS256 (RFC 7518 §3.2), algorithm pinned, 1 hour by default.

Claims: ``sub`` (user id), ``role`` (user | operator | admin), ``iss``, ``aud``, ``iat``, ``nbf``,
``exp``, ``jti``, and ``sid`` for a token a login issued (the login's refresh-token family).
Verification pins ``algorithms=["HS256"]`` (so ``alg: none`` and algorithm confusion are
rejected), requires every registered claim and checks issuer and audience, and refuses a token
whose ``sid`` is revoked (:mod:`opsgate.security.revocations`: at once in the revoking process,
within a second in the others). A token without ``sid`` (``opsgate token USER``, the demo) belongs
to no login and lives until it expires.

When an external identity provider is configured (:mod:`opsgate.security.idp`), a token whose
unverified ``iss`` is the IdP's goes to the IdP verifier instead; the unverified claim only picks
the verifier, each of which pins its own algorithms, key, issuer and audience.
"""

from __future__ import annotations

import uuid
from collections.abc import Container
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt

from opsgate.clock import Clock
from opsgate.config import ConfigError, Settings
from opsgate.security.claims import check_times
from opsgate.security.errors import AuthFailure, Unauthorized, jwt_failure
from opsgate.keyfile import random_key_file
from opsgate.security.idp import idp_verifier
from opsgate.security.sanitizer import hold_secret

ALGORITHM = "HS256"
ROLES = ("user", "operator", "admin")
_VERIFIED_CACHE_SIZE = 10_000
"""Tokens whose signature was checked are remembered (times are still checked on every call):
an HMAC verification costs more than the rest of authentication."""
_REQUIRED = ["sub", "role", "iss", "aud", "iat", "nbf", "exp"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: ``user_id`` and ``roles`` (a tuple of role names); ``external`` for an
    identity provider's user, whose role the IdP asserts (a local token's role is opsgate's own,
    and is trusted on a privileged route only as far as the user's ``users`` row allows)."""

    user_id: str
    roles: tuple[str, ...]
    external: bool = False


def signing_key(settings: Settings) -> bytes:
    """The HS256 key: ``OPSGATE_JWT_SECRET`` if set (:meth:`~opsgate.config.Settings.secret`: its
    ``op://`` reference resolved, or :class:`ConfigError`; never the reference's text), else a
    random 256-bit key kept (mode 0600) in ``settings.jwt_secret_file``, created on first use.
    Raises :class:`ConfigError` for a key under 32 bytes (RFC 7518 §3.2 requires a key at least
    as long as the hash output)."""
    secret = settings.secret("jwt_secret")
    key = (secret if secret is not None else hold_secret(random_key_file(settings.jwt_secret_file))).encode()
    if len(key) < 32:
        name = "OPSGATE_JWT_SECRET" if secret is not None else f"{settings.jwt_secret_file} (OPSGATE_JWT_SECRET_FILE)"
        raise ConfigError(f"{name}: must be at least 32 bytes long (it is {len(key)})")
    return key


class TokenService:
    """Issues and verifies access tokens with one key, issuer, audience and lifetime; ``revoked``
    holds the revoked logins' ids (:class:`~opsgate.security.revocations.RevokedLogins`; none:
    nothing is revoked, for a process that only issues)."""

    def __init__(self, settings: Settings, clock: Clock, revoked: Container[str] = frozenset()) -> None:
        self._key = signing_key(settings)
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._ttl = timedelta(seconds=settings.access_token_ttl_s)
        self._leeway_s = settings.token_clock_leeway_s
        self._clock = clock
        self._revoked = revoked
        self._idp = idp_verifier(settings, clock)
        self._verified: dict[str, dict[str, Any]] = {}  # token -> claims whose signature already checked out
        if self._idp is not None and self._idp.issuer == self._issuer:
            raise ValueError("OPSGATE_IDP_ISSUER must differ from OPSGATE_JWT_ISSUER")

    def issue(self, user_id: str, role: str, sid: str | None = None) -> str:
        """Return a signed access token for ``user_id`` with ``role``, valid for the configured TTL;
        ``sid`` is the id of the login it belongs to (its refresh-token family), refused once that
        is revoked."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        now = self._clock.now()
        claims = {
            "sub": user_id,
            "role": role,
            "iss": self._issuer,
            "aud": self._audience,
            "iat": now,
            "nbf": now,
            "exp": now + self._ttl,
            "jti": uuid.uuid4().hex,
        }
        if sid is not None:
            claims["sid"] = sid
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def verify(self, token: str) -> Principal:
        """Check signature, algorithm, issuer, audience and times (``exp``, ``nbf``, ``iat``:
        :func:`~opsgate.security.claims.check_times`, with ``token_clock_leeway_s`` of leeway) and that the login (``sid``) is not revoked
        (a set lookup, no database read); return the :class:`Principal`.

        Raises :class:`Unauthorized` with a reason that names the failed check, never the token.
        """
        if self._idp is not None and _unverified_issuer(token) == self._idp.issuer:
            user_id, role = self._idp.verify(token)
            return Principal(user_id=user_id, roles=(role,), external=True)
        claims = self._verified.get(token)
        if claims is None:
            claims = self._decode(token)
            if len(self._verified) >= _VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = claims
        check_times(claims, self._clock.now().timestamp(), leeway_s=self._leeway_s)
        if claims.get("sid") in self._revoked:
            raise Unauthorized(AuthFailure.REVOKED)
        return Principal(user_id=claims["sub"], roles=(claims["role"],))

    def _decode(self, token: str) -> dict[str, Any]:
        """Signature, algorithm, issuer, audience, required claims and role (not the times)."""
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": _REQUIRED, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            raise Unauthorized(AuthFailure.WRONG_AUDIENCE) from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(jwt_failure(exc)) from None
        if claims["role"] not in ROLES or not isinstance(claims["sub"], str):
            raise Unauthorized(AuthFailure.UNKNOWN_ROLE)
        if not isinstance(claims.get("sid", ""), str):
            raise Unauthorized(AuthFailure.MALFORMED)
        return claims

def _unverified_issuer(token: str) -> object:
    try:
        return jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.InvalidTokenError:
        return None


def bearer_token(authorization: str | None) -> str:
    """Extract the token from an ``Authorization: Bearer <token>`` header (RFC 6750 §2.1)."""
    if not authorization:
        raise Unauthorized(AuthFailure.MISSING)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(AuthFailure.WRONG_SCHEME)
    return token.strip()
