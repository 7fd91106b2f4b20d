"""Users with credentials and the key ring for the security tests: :func:`add_login` creates a
user with a password (and an encrypted email) in a running gateway; :func:`cipher_for` opens the
key ring and field cipher of a database under the settings' master key."""

from __future__ import annotations

from sqlalchemy import Engine
from tests.gateways import Gateway

from opsgate.clock import Clock
from opsgate.config import Settings
from opsgate.security.crypto import FieldCipher
from opsgate.security.keyring import KeyRing, master_key
from opsgate.security.users import add_user, set_email, set_password


def cipher_for(engine: Engine, settings: Settings, clock: Clock) -> tuple[KeyRing, FieldCipher]:
    """The key ring and field cipher of ``engine`` under ``settings``' master key."""
    ring = KeyRing(engine, master_key(settings), clock)
    return ring, FieldCipher(ring)


def add_login(gateway: Gateway, user_id: str, role: str, password: str, email: str | None = None) -> None:
    """Create ``user_id`` with ``role`` and ``password`` (and an encrypted ``email``) in the gateway."""
    runtime = gateway.runtime
    add_user(runtime.engine, runtime.clock, user_id, role)
    set_password(runtime.engine, user_id, password)
    if email is not None:
        set_email(runtime.engine, runtime.security.cipher, user_id, email)
