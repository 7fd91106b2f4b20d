"""Helpers shared by the authentication, crypto, refresh, RLS and backup tests (issue 6 part B)."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import Engine

from opsgate.app import create_app
from opsgate.localserver import serve_in_thread
from opsgate.security.users import add_user, set_email, set_password
from tests.conftest import Gateway, gateway_settings

from opsgate.clock import Clock
from opsgate.config import Settings
from opsgate.security.crypto import FieldCipher
from opsgate.security.keyring import KeyRing, master_key
from opsgate.store.db import make_engine, upgrade


def migrated_engine(tmp_path: Path, name: str = "opsgate.db") -> Engine:
    """A fresh SQLite file at every migration head."""
    url = f"sqlite:///{tmp_path / name}"
    upgrade(url)
    return make_engine(url)


def security_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings with a generated JWT key and master key and a SQLite file under ``tmp_path``."""
    base = {
        "database_url": f"sqlite:///{tmp_path / 'opsgate.db'}",
        "jwt_secret": secrets.token_urlsafe(48),
        "master_key": base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    return Settings(**{**base, **overrides})


def cipher_for(engine: Engine, settings: Settings, clock: Clock) -> tuple[KeyRing, FieldCipher]:
    """The key ring and field cipher of ``engine`` under ``settings``' master key."""
    ring = KeyRing(engine, master_key(settings), clock)
    return ring, FieldCipher(ring)


@contextmanager
def running_gateway(tmp_path: Path, **overrides: object) -> Iterator[Gateway]:
    """A real gateway on a loopback port with a generated master key (like the ``gateway`` fixture)."""
    master = base64.b64encode(secrets.token_bytes(32)).decode()
    settings = gateway_settings(tmp_path, master_key=master, **overrides)
    app = create_app(settings)
    server = serve_in_thread(app)
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            yield Gateway(settings, app.state.runtime, client)
    finally:
        server.stop()


def add_login(gateway: Gateway, user_id: str, role: str, password: str, email: str | None = None) -> None:
    """Create ``user_id`` with ``role`` and ``password`` (and an encrypted ``email``) in the gateway."""
    runtime = gateway.runtime
    add_user(runtime.engine, runtime.clock, user_id, role)
    set_password(runtime.engine, user_id, password)
    if email is not None:
        set_email(runtime.engine, runtime.security.cipher, user_id, email)
