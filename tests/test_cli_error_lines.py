"""Every command prints its errors through the one sanitizer (``opsgate.security.errorline``): a
value in a provider key's shape -- generated here, never a real key -- given as an operation, a
user, a path, a setting or a secret's name never comes back on stdout or stderr, whichever
command's error carries it. Before, the rollout, backup, ledger, privacy, secrets and report
commands printed their errors unsanitized (an OSError's path, an unknown operation's name)."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opsgate.cli import app

SHAPES: dict[str, Callable[[], str]] = {  # the providers' documented key shapes
    "anthropic": lambda: "sk-ant-api03-" + secrets.token_urlsafe(40),
    "deepseek": lambda: "sk-" + secrets.token_hex(24),
    "gemini": lambda: "AIza" + secrets.token_urlsafe(27)[:35],
}
Case = Callable[[Path, str], tuple[list[str], dict[str, str]]]
NO_DIR = "/proc/{key}"  # a directory that cannot exist or be created
MASTER_KEY = {"OPSGATE_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
"""What backup verify needs to reach the file: without a master key it stops before (8465124)."""

# name: (provider shape, (arguments, environment) for the key, exit status, the error echoes the value)
CASES: dict[str, tuple[str, Case, int, bool]] = {
    "variants show": ("anthropic", lambda t, k: (["variants", "show", k], {}), 2, True),
    "toggles check": ("deepseek", lambda t, k: (["toggles", "check", k, "alice"], {}), 2, True),
    "backup verify": ("gemini", lambda t, k: (["backup", "verify", str(t / f"{k}.bak")], MASTER_KEY), 2, True),
    "backup create": ("anthropic", lambda t, k: (["backup", "create", str(t / k / "x.bak")], {}), 2, True),
    "ledger keygen": ("deepseek", lambda t, k: (
        ["ledger", "keygen"], {"OPSGATE_LEDGER_SIGNING_KEY_FILE": f"{NO_DIR.format(key=k)}/key"}), 2, True),
    "ledger checkpoint": ("gemini", lambda t, k: (
        ["ledger", "checkpoint"], {"OPSGATE_LEDGER_SIGNING_KEY_FILE": f"{NO_DIR.format(key=k)}/key"}), 2, True),
    "privacy manifest": ("anthropic", lambda t, k: (
        ["privacy", "manifest"], {"OPSGATE_PRIVACY_PSEUDONYMISE": f'["{k}"]'}), 2, True),
    "secrets check": ("anthropic", lambda t, k: (["secrets", "check", k], {}), 2, True),  # a key for its name
    "report security": ("deepseek", lambda t, k: (
        ["report", "security", "--output", f"{NO_DIR.format(key=k)}/report.md"], {}), 2, True),
    # their errors do not repeat the value; they stay so
    "incidents ack": ("gemini", lambda t, k: (["incidents", "ack", k], {}), 2, False),
    "budgets delete": ("anthropic", lambda t, k: (["budgets", "delete", "--user", k, "--period", "day"], {}), 2, False),
    "users add": ("deepseek", lambda t, k: (["users", "add", k], {}), 2, False),
    "token": ("gemini", lambda t, k: (["token", k], {}), 1, False),
}


@pytest.mark.parametrize("name", CASES)
def test_an_erroring_command_never_echoes_a_secret_shaped_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                name: str) -> None:
    for variable in [n for n in os.environ if n.startswith("OPSGATE_")]:
        monkeypatch.delenv(variable)
    monkeypatch.chdir(tmp_path)
    shape, case, code, echoed = CASES[name]
    key = SHAPES[shape]()
    args, env = case(tmp_path, key)
    config = tmp_path / "empty.toml"
    config.write_text("")
    result = CliRunner().invoke(app, args, env={"OPSGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
                                                "OPSGATE_CONFIG": str(config), **env})
    assert key not in result.stdout and key not in result.stderr, result.output
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit)  # an error line and an exit, not a traceback
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert ("[REDACTED:" in line) is echoed, line  # the value's place is kept, redacted
