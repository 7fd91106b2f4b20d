"""``opsgate secrets check``: sources, ages, the policy and ``--strict``, never a value; an ``op://``
secret is dated by its 1Password item (loopback Connect stand-in) and its access is ledgered."""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import select
from typer.testing import CliRunner, Result
from tests.security.op_connect import TOKEN, VALUE

from opsgate.cli import app
from opsgate.security import secrets_cli
from opsgate.store.db import make_engine
from opsgate.store.models import ledger_entries

NAMES = ("ANTHROPIC_API_KEY", "DEEPSEEK_API_KEY", "GEMINI_API_KEY")
MISSING_REFERENCE = "op://Prod/Missing/credential"


def anthropic_key() -> str:
    return "sk-ant-api03-" + secrets.token_urlsafe(40)


def deepseek_key() -> str:
    return "sk-" + secrets.token_hex(24)


def gemini_key() -> str:
    return "AIza" + secrets.token_urlsafe(26)


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Print the table unwrapped, so rows can be read line by line."""
    monkeypatch.setattr(secrets_cli, "out", Console(width=250))


def run(tmp_path: Path, env: dict[str, str], *args: str) -> Result:
    base: dict[str, str | None] = {n: None for n in NAMES}
    base |= {f"{n}_PREVIOUS": None for n in NAMES} | {"OP_CONNECT_HOST": None, "OP_CONNECT_TOKEN": None}
    base |= {"OPSGATE_CONFIG": str(_no_config(tmp_path)), "LOCAL_KEY": None, "LOCAL_KEY_ROTATED_AT": None}
    base["OPSGATE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'cli.db'}"
    return CliRunner().invoke(app, ["secrets", "check", *args], env={**base, **env})


def _no_config(tmp_path: Path) -> Path:
    path = tmp_path / "empty.toml"
    path.write_text("")
    return path


def row(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if f" {name} " in line)


def days_ago(days: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


def test_env_secrets_sources_ages_and_strict(tmp_path: Path) -> None:
    keys = {"ANTHROPIC_API_KEY": anthropic_key(), "ANTHROPIC_API_KEY_PREVIOUS": anthropic_key(),
            "DEEPSEEK_API_KEY": deepseek_key()}
    env = {**keys, "ANTHROPIC_API_KEY_ROTATED_AT": days_ago(10),
           "ANTHROPIC_API_KEY_PREVIOUS_ROTATED_AT": days_ago(120)}
    lax = run(tmp_path, env)
    assert lax.exit_code == 0, lax.output
    out = lax.output
    assert "env:ANTHROPIC_API_KEY " in row(out, "ANTHROPIC_API_KEY") and " ok " in row(out, "ANTHROPIC_API_KEY")
    assert " 10 " in row(out, "ANTHROPIC_API_KEY")
    assert "older than 90 days: rotate" in row(out, "ANTHROPIC_API_KEY_PREVIOUS")
    assert " 120 " in row(out, "ANTHROPIC_API_KEY_PREVIOUS")
    assert "age unknown (set DEEPSEEK_API_KEY_ROTATED_AT)" in row(out, "DEEPSEEK_API_KEY")
    assert "unset" in row(out, "GEMINI_API_KEY") and "not set" in row(out, "GEMINI_API_KEY")
    assert "2 warning(s); policy: at most 90 days" in out
    assert not any(value in out for value in keys.values())
    strict = run(tmp_path, env, "--strict")
    assert strict.exit_code == 1 and strict.output == lax.output
    relaxed = run(tmp_path, {**env, "DEEPSEEK_API_KEY_ROTATED_AT": "2026-01-01"}, "--strict", "--max-age-days", "1000")
    assert relaxed.exit_code == 0 and "0 warning(s); policy: at most 1000 days" in relaxed.output


def test_policy_comes_from_settings_and_bad_dates_warn(tmp_path: Path) -> None:
    env = {"GEMINI_API_KEY": gemini_key(), "GEMINI_API_KEY_ROTATED_AT": days_ago(40),
           "DEEPSEEK_API_KEY": deepseek_key(), "DEEPSEEK_API_KEY_ROTATED_AT": "last spring",
           "OPSGATE_SECRET_MAX_AGE_DAYS": "30"}
    result = run(tmp_path, env, "--strict")
    assert result.exit_code == 1
    assert "older than 30 days: rotate" in row(result.output, "GEMINI_API_KEY")
    assert "DEEPSEEK_API_KEY_ROTATED_AT is not ISO 8601" in row(result.output, "DEEPSEEK_API_KEY")


def test_a_named_endpoints_key_is_checked_by_default(tmp_path: Path) -> None:
    """A named OpenAI-compatible endpoint's key (the variable its ``api_key_env`` names, here
    LOCAL_KEY) is a provider key like the built-in ones: it was not checked unless named on the command
    line, so a key of any age passed ``--strict``."""
    config = tmp_path / "opsgate.toml"
    config.write_text('[providers.local]\nkind = "openai-compatible"\nbase_url = "http://127.0.0.1:9/v1"\n'
                      'api_key_env = "LOCAL_KEY"\n')  # pragma: allowlist secret
    key = deepseek_key()
    env = {"OPSGATE_CONFIG": str(config), "LOCAL_KEY": key, "LOCAL_KEY_ROTATED_AT": days_ago(120)}
    result = run(tmp_path, env, "--strict")
    assert result.exit_code == 1, result.output
    local = row(result.output, "LOCAL_KEY")
    assert "env:LOCAL_KEY" in local and " 120 " in local and "older than 90 days: rotate" in local
    assert "1 warning(s); policy: at most 90 days" in result.output and key not in result.output


async def test_op_reference_is_dated_by_its_item_and_ledgered(connect, tmp_path: Path) -> None:  # noqa: F811
    _, seen, _, port = connect
    reference = "op://Prod/Anthropic/keys/credential"
    env = {"ANTHROPIC_API_KEY": reference, "OP_CONNECT_HOST": f"http://127.0.0.1:{port}", "OP_CONNECT_TOKEN": TOKEN,
           "GEMINI_API_KEY": MISSING_REFERENCE}
    result = await asyncio.to_thread(run, tmp_path, env, "--strict")
    assert result.exit_code == 1, result.output
    anthropic = row(result.output, "ANTHROPIC_API_KEY")
    age = (datetime.now(UTC) - datetime(2025, 1, 1, tzinfo=UTC)).days
    assert reference in anthropic and f" {age} " in anthropic and "older than 90 days" in anthropic
    assert f"{MISSING_REFERENCE}: 'Missing' not found" in row(result.output, "GEMINI_API_KEY")
    assert VALUE not in result.output and len(seen) == 5
    with make_engine(f"sqlite:///{tmp_path / 'cli.db'}").connect() as conn:
        bodies = [json.loads(b) for (b,) in conn.execute(select(ledger_entries.c.body))]
    accesses = [(b["secret"], b["actor"], b["purpose"]) for b in bodies if b["kind"] == "secret_access"]
    assert accesses == [("ANTHROPIC_API_KEY", "opsgate-cli", "secrets check"),
                        ("GEMINI_API_KEY", "opsgate-cli", "secrets check")]
