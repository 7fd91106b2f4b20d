"""`opsgate keys` and `opsgate backup` and `users add --password` through Typer's runner."""

from __future__ import annotations

import base64
import secrets

from tests.ledgered import entries
from typer.testing import CliRunner

from opsgate.security.cli import backup_app, keys_app, users_app
from opsgate.store.db import make_engine

runner = CliRunner()


def _env(tmp_path):
    return {"OPSGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
            "OPSGATE_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}


def test_users_keys_and_backup_commands(tmp_path, monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "carol")
    env = _env(tmp_path)
    added = runner.invoke(users_app, ["add", "ada", "--role", "operator", "--password", "--email", "ada@example.org"],
                          input="a long enough pass\na long enough pass\n", env=env)
    assert added.exit_code == 0, added.output
    assert "created ada (operator)" in added.output and "a long enough pass" not in added.output
    rotated = runner.invoke(keys_app, ["rotate"], env=env)
    assert rotated.exit_code == 0 and "data key 2 is now current" in rotated.output
    status = runner.invoke(keys_app, ["status"], env=env)
    assert status.exit_code == 0 and "current" in status.output and "index" in status.output
    moved = runner.invoke(keys_app, ["reencrypt"], env=env)
    assert moved.exit_code == 0 and "moved 1 values" in moved.output
    engine = make_engine(env["OPSGATE_DATABASE_URL"])
    assert entries(engine, "key.rotate") == [{"actor": "cli:carol", "key_id": 2, "before": 1}]
    assert entries(engine, "key.reencrypt") == [
        {"actor": "cli:carol", "column": "users.email_ciphertext", "key_id": 2, "from": [1], "moved": 1}]
    assert entries(engine, "key.retire") == []  # key 2 is not yet 5 minutes old
    engine.dispose()
    backup = tmp_path / "b.ogb"
    assert runner.invoke(backup_app, ["create", str(backup)], env=env).exit_code == 0
    verified = runner.invoke(backup_app, ["verify", str(backup)], env=env)
    assert verified.exit_code == 0 and "sqlite backup" in verified.output and "OK" in verified.output
    wrong = runner.invoke(backup_app, ["verify", str(backup)], env={**env, "OPSGATE_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode()})
    assert wrong.exit_code == 2


def test_a_short_password_is_refused(tmp_path):
    result = runner.invoke(users_app, ["add", "bob", "--password"], input="short\nshort\n", env=_env(tmp_path))
    assert result.exit_code == 2 and "12 to 1024" in result.output
