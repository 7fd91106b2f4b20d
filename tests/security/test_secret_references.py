"""Every secret setting that takes an ``op://`` 1Password reference (config.REFERENCE_SETTINGS:
the JWT secret, the IdP's HS256 secret, the master key, the notifiers' and the ledger anchor's
credentials) is resolved through the secrets layer before use -- ledgered, 1Password Connect (the
loopback stand-in of :mod:`tests.security.op_connect`) -- and its resolved value checked by the
setting's rule; one that cannot be resolved refuses in one line, exit 2, never echoing the value.
Tester-ops F1: the reference's own text was the HS256 signing key, so anyone who read the
committed reference could forge admin tokens."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jwt
import pytest
from sqlalchemy import select
from tests.gateways import gateway_settings
from tests.paths import EXAMPLES
from tests.security.op_connect import TOKEN, VALUE
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.clock import SystemClock
from opsgate.config import ConfigError, load_settings
from opsgate.runtime import cli_services, start_runtime
from opsgate.security.auth import TokenService
from opsgate.security.users import add_user
from opsgate.store.db import make_engine
from opsgate.store.models import ledger_entries

REFERENCE = "op://Prod/Anthropic/keys/credential"  # the stand-in's field: VALUE, 67 bytes
SHORT_REFERENCE = "op://vault/jwt/secret"  # under 32 bytes: the length rule is for the value
PLAIN_KEYS = {"DEEPSEEK_API_KEY": "sk-" + "d" * 40, "GEMINI_API_KEY": "AIza" + "g" * 35}  # pragma: allowlist secret (fake, key-shaped)
NOT_SET = "OPSGATE_JWT_SECRET (environment): OPSGATE_JWT_SECRET is a 1Password reference but OP_CONNECT_HOST is not set"


def _connect_env(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    monkeypatch.setenv("OP_CONNECT_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OP_CONNECT_TOKEN", TOKEN)


def _cli(tmp_path: Path, env: dict[str, str], *args: str):  # type: ignore[no-untyped-def]
    base = {"OPSGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "OPSGATE_CONFIG": str(tmp_path / "none.toml"),
            "OPSGATE_MASTER_KEY_FILE": str(tmp_path / "master-key"), "OP_CONNECT_HOST": None, "OP_CONNECT_TOKEN": None}
    (tmp_path / "none.toml").write_text("")
    return CliRunner().invoke(app, list(args), env={**base, **env})


def _accesses(database: str) -> list[tuple[str, str, str]]:
    with make_engine(database).connect() as conn:
        bodies = [json.loads(b) for (b,) in conn.execute(select(ledger_entries.c.body).order_by(ledger_entries.c.seq))]
    return [(b["secret"], b["actor"], b["purpose"]) for b in bodies if b["kind"] == "secret_access"]


async def test_the_gateway_signs_with_the_resolved_jwt_secret_never_the_reference(
    connect, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    _, seen, _, port = connect
    _connect_env(monkeypatch, port)
    runtime = await start_runtime(gateway_settings(tmp_path, jwt_secret=REFERENCE))
    try:
        token = runtime.tokens.issue("alice", "admin")
        database = runtime.settings.database_url
    finally:
        await runtime.close()
    assert jwt.decode(token, VALUE, algorithms=["HS256"], audience="opsgate-api")["sub"] == "alice"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, REFERENCE, algorithms=["HS256"], audience="opsgate-api")
    assert len(seen) == 3  # vault, item list, item
    assert ("OPSGATE_JWT_SECRET", "runtime", "settings") in _accesses(database)


async def test_opsgate_token_signs_with_the_resolved_secret(
    connect, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    _, _, _, port = connect
    database = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {"OPSGATE_JWT_SECRET": REFERENCE, "OP_CONNECT_HOST": f"http://127.0.0.1:{port}", "OP_CONNECT_TOKEN": TOKEN}
    assert (await asyncio.to_thread(_cli, tmp_path, env, "users", "add", "alice")).exit_code == 0
    result = await asyncio.to_thread(_cli, tmp_path, env, "token", "alice")
    assert result.exit_code == 0, result.output
    assert jwt.decode(result.output.strip(), VALUE, algorithms=["HS256"], audience="opsgate-api")["sub"] == "alice"
    assert ("OPSGATE_JWT_SECRET", "runtime", "settings") in _accesses(database)


@pytest.mark.parametrize("reference", [REFERENCE, SHORT_REFERENCE])
def test_opsgate_token_without_connect_refuses_in_one_line(tmp_path: Path, reference: str) -> None:
    result = _cli(tmp_path, {"OPSGATE_JWT_SECRET": reference}, "token", "alice")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: {NOT_SET}"
    assert reference not in result.output


def test_opsgate_serve_without_connect_refuses_in_one_line(tmp_path: Path) -> None:
    result = _cli(tmp_path, {"OPSGATE_JWT_SECRET": REFERENCE}, "serve", "--port", "0")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: {NOT_SET}"


def test_opsgate_run_without_connect_refuses_in_one_line(tmp_path: Path) -> None:
    result = _cli(tmp_path, {"OPSGATE_JWT_SECRET": REFERENCE, "OPSGATE_IDP_HS256_SECRET": SHORT_REFERENCE,
                             "OPSGATE_IDP_ISSUER": "https://idp.example", "OPSGATE_IDP_AUDIENCE": "opsgate"},
                  "run", "task-prioritize", "--input", str(EXAMPLES / "task-prioritize.json"), "--sandbox")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output  # the sandboxes' banner comes first, then one line
    assert result.output.strip().splitlines()[-1] == (f"error: {NOT_SET}; OPSGATE_IDP_HS256_SECRET (environment): OPSGATE_IDP_HS256_SECRET is a "
                    "1Password reference but OP_CONNECT_HOST is not set")


async def test_a_resolved_value_must_pass_its_settings_rule(
    connect, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    _, _, _, port = connect
    _connect_env(monkeypatch, port)
    with pytest.raises(ConfigError) as info:
        await start_runtime(gateway_settings(tmp_path, master_key=REFERENCE))
    assert str(info.value) == "OPSGATE_MASTER_KEY (environment): its 1Password value is not base64"
    assert VALUE not in str(info.value)


async def test_cli_commands_and_the_notifiers_get_resolved_credentials(
    connect, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    _, _, _, port = connect
    _connect_env(monkeypatch, port)
    settings = gateway_settings(tmp_path, sandbox=False, pagerduty_routing_key=REFERENCE, smtp_password=REFERENCE,
                                smtp_host="127.0.0.1", email_from="opsgate@example.com")

    def resolved() -> tuple[str | None, str | None]:
        with cli_services(settings) as services:
            return services.settings.secret("pagerduty_routing_key"), services.settings.secret("smtp_password")

    assert await asyncio.to_thread(resolved) == (VALUE, VALUE)


def test_an_unresolved_reference_is_never_used_as_the_secret(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path, jwt_secret=REFERENCE)
    with pytest.raises(ConfigError) as info:
        TokenService(settings, SystemClock())
    assert str(info.value).startswith("jwt_secret (") and "is a 1Password reference (op://) that was not resolved" in str(info.value)


def test_the_redaction_key_cannot_be_a_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSGATE_REDACTION_KEY", REFERENCE)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith("OPSGATE_REDACTION_KEY (environment): cannot be a 1Password reference")



def test_config_check_reports_every_reference_start_up_could_not_resolve(tmp_path: Path) -> None:
    """Tester-ops F10: ``opsgate config check`` listed an unresolvable op:// provider key as
    ``key: env ANTHROPIC_API_KEY`` with no problem, then ``opsgate run`` refused it."""
    keys = PLAIN_KEYS | {"ANTHROPIC_API_KEY": REFERENCE}
    result = _cli(tmp_path, {**keys, "OPSGATE_JWT_SECRET": SHORT_REFERENCE, "COLUMNS": "240"}, "config", "check")
    assert result.exit_code == 1, result.output
    problems = [line for line in result.output.splitlines() if line.startswith("problem:")]
    assert problems == [
        "problem: ANTHROPIC_API_KEY (environment): ANTHROPIC_API_KEY is a 1Password reference but OP_CONNECT_HOST "
        "is not set", f"problem: {NOT_SET}"]


async def test_config_check_resolves_references_as_start_up_does(
    connect, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    _, seen, _, port = connect
    keys = PLAIN_KEYS | {"ANTHROPIC_API_KEY": REFERENCE}
    env = {**keys, "OPSGATE_MASTER_KEY": REFERENCE, "OP_CONNECT_HOST": f"http://127.0.0.1:{port}",
           "OP_CONNECT_TOKEN": TOKEN, "COLUMNS": "240"}
    result = await asyncio.to_thread(_cli, tmp_path, env, "config", "check")
    assert result.exit_code == 1, result.output
    problems = [line for line in result.output.splitlines() if line.startswith("problem:")]
    assert problems == ["problem: OPSGATE_MASTER_KEY (environment): its 1Password value is not base64"]
    assert VALUE not in result.output and len(seen) == 6  # both references resolved
    assert ("ANTHROPIC_API_KEY", "opsgate-cli", "provider client") in _accesses(f"sqlite:///{tmp_path / 'cli.db'}")
