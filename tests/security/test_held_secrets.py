"""Every secret opsgate reads is held by the sanitizer, so it is masked in prompts and redacted in
logs whatever its shape (outside tester's F1: a named endpoint's ``api_key_env`` key reached the
provider verbatim). One enumeration, :func:`opsgate.security.sanitizer.settings_secrets`, finds
the settings' secrets by the shape of each field; code that reads a key file or token later holds
it through :func:`opsgate.security.sanitizer.hold_secret`.
"""

from __future__ import annotations

import base64
import secrets
import types
import typing
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr
from tests.operations.privacy_recorder import prompt_of, recorded_gateway
from tests.stores import migrated_engine

from opsgate import testing
from opsgate.config import Settings
from opsgate.keyfile import publish_new
from opsgate.security import metrics_token
from opsgate.security.auth import signing_key
from opsgate.security.keyring import provision_master_key
from opsgate.security.masking import SecretMasker
from opsgate.security.sanitizer import (
    configure_from_settings,
    held_secrets,
    is_sensitive_name,
    sanitize,
    settings_secrets,
)
from opsgate.security.secrets import connect_from_env

NOT_SECRETS = {"jwt_issuer", "jwt_audience"}
"""Settings whose names sound sensitive but which are public identifiers (RFC 7519 ``iss``, ``aud``)."""


def _odd(prefix: str) -> str:
    """A generated value in no known key shape (the sanitizer's rules alone would miss it)."""
    return f"{prefix}-{secrets.token_hex(10)}"


def test_a_sensitively_named_setting_is_never_a_plain_string() -> None:
    """A new secret setting typed ``str`` would bypass :func:`settings_secrets`: it must be a
    ``SecretStr`` (held by type) or a key file ``Path`` (its content held)."""
    plain = []
    for name, field in Settings.model_fields.items():
        kinds = set(typing.get_args(field.annotation)) if isinstance(field.annotation, types.UnionType) else {
            field.annotation}
        if is_sensitive_name(name) and str in kinds and name not in NOT_SECRETS:
            plain.append(name)
    assert plain == []


def test_every_kind_of_settings_secret_is_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    named, db_pw, redis_pw, smtp, hook = (_odd(p) for p in ("named", "dbpw", "redispw", "smtp", "hook"))
    files = {name: _odd(name) for name in ("jwt", "master", "ledger", "metrics")}
    for name, content in files.items():
        publish_new(tmp_path / f"{name}.key", content + "\n")
    monkeypatch.setenv("F1_NAMED_KEY", named)
    settings = testing.gateway_settings(
        tmp_path,
        database_url=f"postgresql+psycopg://app:{db_pw}@127.0.0.1:5432/test",
        redis_url=f"redis://:{redis_pw}@127.0.0.1:6379/0",
        smtp_password=smtp, discord_webhook_url=f"https://discord.test/api/webhooks/1/{hook}",
        jwt_secret=None, master_key=None,
        jwt_secret_file=tmp_path / "jwt.key", master_key_file=tmp_path / "master.key",
        ledger_signing_key_file=tmp_path / "ledger.key", metrics_token_file=tmp_path / "metrics.key",
        providers={"local": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1",
                             "api_key_env": "F1_NAMED_KEY"}},  # pragma: allowlist secret
    )  # fmt: skip
    found = set(settings_secrets(settings))
    expected = {named, db_pw, redis_pw, smtp, f"https://discord.test/api/webhooks/1/{hook}", *files.values()}
    assert expected <= found
    configure_from_settings(settings)
    assert expected <= set(held_secrets())
    line = f"retrying with key {named} and db password {db_pw} (redis {redis_pw})"
    redacted = sanitize(line)
    assert named not in redacted and db_pw not in redacted and redis_pw not in redacted
    assert redacted.count("[REDACTED:secret:") == 3
    assert SecretMasker().mask(line) == "retrying with key [SECRET_1] and db password [SECRET_2] (redis [SECRET_3])"


def test_key_files_created_after_start_up_are_held_when_read(tmp_path: Path) -> None:
    settings = testing.gateway_settings(
        tmp_path, jwt_secret=None, master_key=None,
        jwt_secret_file=tmp_path / "jwt", master_key_file=tmp_path / "master")  # fmt: skip
    engine = migrated_engine(tmp_path)
    jwt_key, master = signing_key(settings).decode(), provision_master_key(settings, engine)
    engine.dispose()
    assert jwt_key in held_secrets()
    assert base64.urlsafe_b64encode(master).decode() in held_secrets()
    token_file = tmp_path / "metrics-token"
    metrics_token.create(token_file)
    token = token_file.read_text().strip()
    assert metrics_token.accepts(token_file, f"Bearer {token}") is True
    assert token in held_secrets()


async def test_the_connect_token_is_held() -> None:
    token = _odd("op-connect")
    async with aiohttp.ClientSession() as session:
        assert connect_from_env(session, {"OP_CONNECT_HOST": "http://127.0.0.1:9", "OP_CONNECT_TOKEN": token})
    assert token in held_secrets()


def test_a_named_endpoints_key_never_reaches_a_provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tester's repro over real HTTP: the local endpoint's key written in an email body arrives
    at the Anthropic provider as a placeholder, like the built-in keys."""
    named = _odd("reckey")
    monkeypatch.setenv("REC_KEY", named)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "ops@example.com", "dev@example.com", f"key {named}"
    msg.set_content(f"named provider key: {named}\n")
    providers = {"rec": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1",
                         "api_key_env": "REC_KEY"}}  # pragma: allowlist secret
    with recorded_gateway(tmp_path, providers=providers) as (gw, recorder):
        resp = gw.post("email-classify", {"raw": msg.as_string()})
        assert resp.status_code == 200, resp.text
        [request] = [r for r in recorder.received if r["path"].startswith("/anthropic/")]
        prompt = prompt_of(request["body"])
    assert named not in recorder.texts()
    assert "named provider key: [SECRET_1]" in prompt and "key [SECRET_1]" in prompt
    assert resp.json()["privacy"]["masked"] == {"secret": 1}


def test_a_secret_str_setting_is_held_by_its_type(tmp_path: Path) -> None:
    value = _odd("pagerduty")
    settings = testing.gateway_settings(tmp_path, pagerduty_routing_key=SecretStr(value))
    assert value in set(settings_secrets(settings))
