"""The security domain's long-lived objects for one gateway process, built once per runtime."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from opsgate.clock import Clock
from opsgate.config import Settings
from opsgate.security.crypto import FieldCipher
from opsgate.security.keyring import KeyRing, derived_key, provision_master_key
from opsgate.security.refresh import RefreshTokens
from opsgate.security.revocations import RevokedLogins
from opsgate.security.sessions import SessionManager


@dataclass(frozen=True, slots=True)
class SecurityServices:
    """Key ring, field cipher, refresh tokens, the revoked logins and browser sessions over the
    runtime's engine."""

    keyring: KeyRing
    cipher: FieldCipher
    refresh: RefreshTokens
    revoked: RevokedLogins
    sessions: SessionManager


def build_security(settings: Settings, clock: Clock, engine: Engine) -> SecurityServices:
    """The :class:`SecurityServices` over ``engine``: the master key from ``settings`` (env or key
    file, created only for a database without a key ring, see
    :func:`~opsgate.security.keyring.provision_master_key`; :class:`KeyRingError` when unusable),
    refresh-token lifetimes and successor key, the revoked logins (told of every revocation made
    here), and the session cookie settings. Built once, by the runtime."""
    keyring = KeyRing(engine, provision_master_key(settings, engine), clock)
    revoked = RevokedLogins(engine, clock, settings.access_token_ttl_s + settings.token_clock_leeway_s)
    refresh = RefreshTokens(engine, clock, settings.refresh_token_ttl_s, settings.refresh_reuse_grace_s,
                            successor_key=derived_key(settings, "refresh-successors"), on_revoke=revoked.add)
    return SecurityServices(keyring, FieldCipher(keyring), refresh, revoked, SessionManager(settings, clock, refresh))

