"""Helpers shared by the authentication, crypto, refresh, RLS and backup tests (issue 6 part B)."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

from sqlalchemy import Engine

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
