"""The master key against the key ring (tester-priv F10): a missing key file is never regenerated
over a database that holds wrapped keys; a master key that does not unwrap the ring stops
start-up in one line, makes ``/readyz`` not ready, and is a 503 wherever a request meets it; a
corrupted value is named by ``keys reencrypt``."""

from __future__ import annotations

import asyncio
import base64
import secrets

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr
from sqlalchemy import select, update
from typer.testing import CliRunner

from opsgate.cli import app as cli_app
from opsgate.clock import SystemClock
from opsgate.runtime import start_runtime
from opsgate.security.errors import KeyRingError
from opsgate.security.keyring import master_key
from opsgate.security.models import encryption_keys, users
from opsgate.security.service import build_security
from opsgate.store.db import open_database
from tests.gateways import gateway_settings, running_gateway
from tests.security.credentials import add_login
from tests.stores import migrated_engine

runner = CliRunner()
PASSWORD = "correct horse battery staple"  # pragma: allowlist secret


def _open_ring(settings) -> None:
    """Open the key ring of ``settings``' database as start-up does (an empty one gets its ring)."""
    engine = open_database(settings)
    try:
        build_security(settings, SystemClock(), engine).keyring.reload()
    finally:
        engine.dispose()


def _random_master() -> SecretStr:
    return SecretStr(base64.b64encode(secrets.token_bytes(32)).decode())


def test_a_missing_master_key_file_is_refused_once_the_database_holds_a_ring(tmp_path):
    key_file = tmp_path / "keys" / "master-key"
    settings = gateway_settings(tmp_path, master_key=None, master_key_file=key_file)
    engine = migrated_engine(tmp_path)
    build_security(settings, SystemClock(), engine).keyring.reload()  # an empty database: file and ring made
    assert key_file.exists() and oct(key_file.stat().st_mode & 0o777) == "0o600"
    first = master_key(settings)
    key_file.unlink()
    for attempt in (lambda: build_security(settings, SystemClock(), engine),
                    lambda: asyncio.run(start_runtime(settings))):
        with pytest.raises(KeyRingError, match="master-key is missing but the database holds 2 keys wrapped"):
            attempt()
        assert not key_file.exists()  # no new key beside a ring wrapped under the old one
    key_file.write_text(base64.urlsafe_b64encode(first).decode())  # restored from its backup
    _open_ring(settings)
    engine.dispose()


def test_start_up_refuses_a_master_key_that_does_not_unwrap_the_ring(tmp_path):
    settings = gateway_settings(tmp_path)
    _open_ring(settings)  # creates the ring under the configured key
    wrong = settings.model_copy(update={"master_key": _random_master()})
    with pytest.raises(KeyRingError, match="the master key does not unwrap the key ring"):
        asyncio.run(start_runtime(wrong))


def test_serve_and_keys_status_say_it_in_one_line(tmp_path, monkeypatch):
    settings = gateway_settings(tmp_path)
    _open_ring(settings)
    env = {"OPSGATE_DATABASE_URL": settings.database_url,
           "OPSGATE_MASTER_KEY": _random_master().get_secret_value()}

    async def serving(*args, **kwargs):
        raise AssertionError("uvicorn started with a master key that does not unwrap the ring")

    monkeypatch.setattr("uvicorn.Server.serve", serving)
    for command in (["serve", "--port", "0"], ["keys", "status"]):
        result = runner.invoke(cli_app, command, env=env)
        assert result.exit_code == 2, (command, result.output)
        assert result.output.strip() == "error: the master key does not unwrap the key ring", command
    missing = {"OPSGATE_DATABASE_URL": settings.database_url, "OPSGATE_MASTER_KEY_FILE": str(tmp_path / "gone")}
    result = runner.invoke(cli_app, ["keys", "rotate"], env=missing)
    assert result.exit_code == 2 and "gone is missing but the database holds 2 keys" in " ".join(result.output.split())
    assert not (tmp_path / "gone").exists()


def test_readyz_is_not_ready_when_the_ring_stops_unwrapping(tmp_path):
    with running_gateway(gateway_settings(tmp_path)) as gw:
        gw.runtime.security.keyring.current()  # the ring, made on first use
        assert gw.client.get("/readyz").json() == {"status": "ready"}
        other = AESGCM(secrets.token_bytes(32))  # a ring restored from another deployment's database
        with gw.runtime.engine.begin() as conn:
            for key_id, purpose in conn.execute(select(encryption_keys.c.key_id, encryption_keys.c.purpose)).all():
                nonce = secrets.token_bytes(12)
                wrapped = nonce + other.encrypt(nonce, secrets.token_bytes(32), f"opsgate-key:{purpose}:{key_id}".encode())
                conn.execute(update(encryption_keys).where(encryption_keys.c.key_id == key_id).values(wrapped=wrapped))
        response = gw.client.get("/readyz")
        assert response.status_code == 503
        assert (response.json()["code"], response.json()["detail"]) == (
            "not_ready", "the master key does not unwrap the key ring")


def test_a_key_ring_failure_at_sign_in_is_a_503_with_retry_after(tmp_path, monkeypatch):
    """The documented answer for a token-endpoint server failure (docs/security.md), not a 500."""
    def unwrap_fails(*args, **kwargs):
        raise KeyRingError("the master key does not unwrap the key ring")

    with running_gateway(gateway_settings(tmp_path)) as gw:
        add_login(gw, "ada", "user", PASSWORD, email="ada@example.org")
        monkeypatch.setattr("opsgate.security.views.authenticate", unwrap_fails)
        response = gw.client.post("/v1/auth/token", data={"grant_type": "password", "username": "ada@example.org",
                                                          "password": PASSWORD})
        assert response.status_code == 503 and response.headers["retry-after"] == "60"
        assert response.json()["code"] == "key_ring_error"


def test_keys_reencrypt_names_the_row_it_cannot_decrypt_and_exits_1(tmp_path):
    settings = gateway_settings(tmp_path)
    env = {"OPSGATE_DATABASE_URL": settings.database_url,
           "OPSGATE_MASTER_KEY": settings.master_key.get_secret_value()}
    for user_id in ("ada", "bob"):
        assert runner.invoke(cli_app, ["users", "add", user_id, "--email", f"{user_id}@example.org"],
                             env=env).exit_code == 0
    engine = open_database(settings)
    with engine.begin() as conn:
        blob = conn.execute(select(users.c.email_ciphertext).where(users.c.user_id == "ada")).scalar()
        conn.execute(update(users).where(users.c.user_id == "ada").values(email_ciphertext=blob[:-1] + b"\0"))
    engine.dispose()
    assert runner.invoke(cli_app, ["keys", "rotate"], env=env).exit_code == 0
    result = runner.invoke(cli_app, ["keys", "reencrypt"], env=env)
    assert result.exit_code == 1, result.output
    assert ("undecryptable: users.email_ciphertext row user_id=ada: a stored ciphertext failed authentication"
            in " ".join(result.output.split()))
    assert "moved 1 values" in result.output and "Traceback" not in result.output
