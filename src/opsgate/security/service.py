"""The security domain's long-lived objects for one gateway process, built once per runtime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opsgate.security.crypto import FieldCipher
from opsgate.security.keyring import KeyRing, master_key
from opsgate.security.refresh import RefreshTokens
from opsgate.security.sessions import SessionManager


@dataclass(frozen=True, slots=True)
class SecurityServices:
    """Key ring, field cipher, refresh tokens and browser sessions over the runtime's engine."""

    keyring: KeyRing
    cipher: FieldCipher
    refresh: RefreshTokens
    sessions: SessionManager


def security_services(runtime: Any) -> SecurityServices:
    """The :class:`SecurityServices` of ``runtime`` (an :class:`opsgate.runtime.Runtime`), created on
    first use and kept on it."""
    services = getattr(runtime, "_security_services", None)
    if services is None:
        settings, clock, engine = runtime.settings, runtime.clock, runtime.engine
        keyring = KeyRing(engine, master_key(settings), clock)
        refresh = RefreshTokens(engine, clock, settings.refresh_token_ttl_s, settings.refresh_reuse_grace_s)
        services = SecurityServices(keyring, FieldCipher(keyring), refresh, SessionManager(settings, clock, refresh))
        runtime._security_services = services
    return services
