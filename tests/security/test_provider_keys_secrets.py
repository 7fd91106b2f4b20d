"""Provider keys go through the secrets layer at start-up: an ``op://`` reference resolved by the
loopback 1Password Connect stand-in reaches the provider sandbox as the request's key header, and
the ``secret_access`` ledger entry comes before the first ``intent``. A named OpenAI-compatible
endpoint's key (``[providers.<name>] api_key_env``) takes the same path, is held by the sanitizer,
is checked by the readiness audit, and a reference that cannot be resolved stops start-up with
one line naming its variable."""

from __future__ import annotations

import json
import os
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import create_engine, select
from tests.gateways import gateway_settings
from tests.paths import EXAMPLES
from tests.security.op_connect import TOKEN, VALUE

import opsgate.sandbox.anthropic as anthropic_sandbox
import opsgate.sandbox.deepseek as deepseek_sandbox
from opsgate.clock import ManualClock
from opsgate.config import ConfigError, Settings
from opsgate.operations.io import input_from_file
from opsgate.pipeline import Call
from opsgate.reports.readiness import Context
from opsgate.reports.seed_checks import onepassword_verified, provider_key_rotation
from opsgate.runtime import start_runtime
from opsgate.sandbox.server import SandboxServer
from opsgate.security.sanitizer import sanitize, settings_secrets
from opsgate.security.secrets import PROVIDER_KEYS
from opsgate.security.users import add_user
from opsgate.store.models import ledger_entries

REFERENCE = "op://Prod/Anthropic/keys/credential"


@pytest.fixture
def seen_keys(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every key the Anthropic sandbox reads from a request's headers."""
    seen: list[str] = []
    read = anthropic_sandbox._api_key

    def recording(request):  # type: ignore[no-untyped-def]
        seen.append(read(request))
        return seen[-1]

    monkeypatch.setattr(anthropic_sandbox, "_api_key", recording)
    return seen


async def test_op_reference_reaches_the_sandbox_and_is_ledgered_first(
    connect, seen_keys: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    _, connect_requests, _, port = connect
    monkeypatch.setenv("OP_CONNECT_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OP_CONNECT_TOKEN", TOKEN)
    deepseek_key = "sk-" + secrets.token_hex(24)
    settings = gateway_settings(tmp_path, anthropic_api_key=REFERENCE, deepseek_api_key=deepseek_key)
    runtime = await start_runtime(settings)
    try:
        assert runtime.settings.anthropic_api_key.get_secret_value() == VALUE  # type: ignore[union-attr]
        assert runtime.settings.deepseek_api_key.get_secret_value() == deepseek_key  # type: ignore[union-attr]
        assert runtime.settings.gemini_api_key.get_secret_value().startswith("AIza")  # type: ignore[union-attr]
        add_user(runtime.engine, runtime.clock, "alice")
        body = orjson.dumps(input_from_file("task-prioritize", EXAMPLES / "task-prioritize.json", None))
        token = runtime.tokens.issue("alice", "user")
        outcome = await runtime.gateway.govern(Call("task-prioritize", body, token, uuid.uuid4().hex))
        assert (outcome.provider, outcome.attempts) == ("anthropic", 1)
        with runtime.engine.connect() as conn:
            bodies = [json.loads(b) for (b,) in conn.execute(select(ledger_entries.c.body).order_by(ledger_entries.c.seq))]
    finally:
        await runtime.close()
    assert seen_keys == [VALUE]  # the first target is Anthropic, answered at once
    assert len(connect_requests) == 3  # vault, item list, item: resolved once
    kinds = [b["kind"] for b in bodies]
    accesses = [b for b in bodies if b["kind"] == "secret_access"]
    assert {a["secret"] for a in accesses} == {"ANTHROPIC_API_KEY", "DEEPSEEK_API_KEY", "GEMINI_API_KEY"}
    assert all(a["actor"] == "runtime" and a["purpose"] == "provider client" for a in accesses)
    assert max(i for i, k in enumerate(kinds) if k == "secret_access") < kinds.index("intent")
    assert VALUE not in json.dumps(bodies) and deepseek_key not in json.dumps(bodies)


# Named OpenAI-compatible endpoints ([providers.<name>] api_key_env) -----------------------------
ENDPOINT = "local"
KEY_ENV = "LOCAL_KEY"  # the endpoint's api_key_env
MODEL = "deepseek-flash"  # a model the upstream (the DeepSeek sandbox's wire format) serves


@pytest.fixture
def upstream_keys(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ``Authorization`` header of every request the DeepSeek sandbox (the named endpoint's
    upstream) receives."""
    seen: list[str] = []
    answer = deepseek_sandbox.create_chat_completion

    async def recording(request):  # type: ignore[no-untyped-def]
        seen.append(request.headers.get("Authorization", ""))
        return await answer(request)

    monkeypatch.setattr(deepseek_sandbox, "create_chat_completion", recording)
    return seen


def _endpoint_settings(tmp_path: Path, base_url: str) -> Settings:
    """Sandboxed gateway settings whose task-prioritize route is only the named endpoint, keyed by
    the variable ``LOCAL_KEY``."""
    return gateway_settings(
        tmp_path,
        providers={ENDPOINT: {"kind": "openai-compatible", "base_url": base_url, "json_mode": "json_object",
                              "api_key_env": KEY_ENV}},
        routes={"task-prioritize": {"chain": [f"{ENDPOINT}/{MODEL}"]}},
        prices={f"{ENDPOINT}/{MODEL}": {"input": "0", "output": "0"}},
    )


async def test_a_named_endpoints_op_key_reaches_it_resolved_never_as_the_reference(
    connect, upstream_keys: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    _, connect_requests, _, port = connect
    monkeypatch.setenv("OP_CONNECT_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OP_CONNECT_TOKEN", TOKEN)
    monkeypatch.setenv(KEY_ENV, REFERENCE)
    async with SandboxServer() as upstream:
        runtime = await start_runtime(_endpoint_settings(tmp_path, upstream.base_urls["deepseek"]))
        try:
            assert runtime.settings.providers[ENDPOINT].api_key() == VALUE
            assert VALUE in set(settings_secrets(runtime.settings))
            add_user(runtime.engine, runtime.clock, "alice")
            body = orjson.dumps(input_from_file("task-prioritize", EXAMPLES / "task-prioritize.json", None))
            token = runtime.tokens.issue("alice", "user")
            outcome = await runtime.gateway.govern(Call("task-prioritize", body, token, uuid.uuid4().hex))
            with runtime.engine.connect() as conn:
                bodies = [json.loads(b) for (b,) in conn.execute(select(ledger_entries.c.body).order_by(ledger_entries.c.seq))]
        finally:
            await runtime.close()
    assert (outcome.provider, outcome.attempts) == (ENDPOINT, 1)
    assert upstream_keys == [f"Bearer {VALUE}"]  # resolved, and the reference never sent
    assert len(connect_requests) == 3  # vault, item list, item: resolved once
    [access] = [b for b in bodies if b["kind"] == "secret_access" and b["secret"] == KEY_ENV]
    assert (access["actor"], access["purpose"]) == ("runtime", "provider client")
    kinds = [b["kind"] for b in bodies]
    assert bodies.index(access) < kinds.index("intent")
    assert VALUE not in json.dumps(bodies)  # the ledgered routing configuration names the variable only
    assert "[REDACTED" in sanitize(f"upstream said {VALUE}") and VALUE not in sanitize(f"upstream said {VALUE}")


async def test_a_named_endpoints_unresolvable_reference_stops_start_up_naming_its_variable(
    connect, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    _, _, _, port = connect
    monkeypatch.setenv("OP_CONNECT_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OP_CONNECT_TOKEN", TOKEN)
    monkeypatch.setenv(KEY_ENV, "op://Prod/Missing/credential")
    with pytest.raises(ConfigError) as info:
        await start_runtime(_endpoint_settings(tmp_path, "http://127.0.0.1:9/deepseek"))
    assert str(info.value) == ("LOCAL_KEY (environment): 1Password reference op://Prod/Missing/credential: "
                               "'Missing' not found")


async def test_the_readiness_check_resolves_a_named_endpoints_reference(
    connect, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    _, connect_requests, _, port = connect
    for name in (*PROVIDER_KEYS, "OPSGATE_JWT_SECRET", "OPSGATE_MASTER_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OP_CONNECT_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OP_CONNECT_TOKEN", TOKEN)
    monkeypatch.setenv(KEY_ENV, REFERENCE)
    settings = _endpoint_settings(tmp_path, "http://127.0.0.1:9/deepseek")
    ctx = Context(settings, create_engine("sqlite://"), ManualClock(datetime(2026, 12, 5, tzinfo=UTC)), tmp_path)
    assert await onepassword_verified(ctx) == (
        True, "1 op:// reference(s) resolved through 1Password Connect: LOCAL_KEY")
    assert len(connect_requests) == 3


@pytest.mark.parametrize("variable", ["OPSGATE_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY"])
async def test_the_readiness_check_finds_a_reference_under_either_name_the_gateway_reads(
    connect, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str  # noqa: F811
) -> None:
    """The gateway reads Anthropic's key from ANTHROPIC_API_KEY or OPSGATE_ANTHROPIC_API_KEY
    (config.py's aliases) and resolves a reference in either; the check looked at the first
    name only and found the second "not applicable" without resolving it."""
    _, connect_requests, _, port = connect
    for name in [n for n in os.environ if n.startswith("OPSGATE_") or n in PROVIDER_KEYS]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no opsgate.toml
    monkeypatch.setenv("OP_CONNECT_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OP_CONNECT_TOKEN", TOKEN)
    monkeypatch.setenv(variable, REFERENCE)
    ctx = Context(Settings(), create_engine("sqlite://"), ManualClock(datetime(2026, 12, 5, tzinfo=UTC)), tmp_path)
    assert await onepassword_verified(ctx) == (
        True, "1 op:// reference(s) resolved through 1Password Connect: ANTHROPIC_API_KEY")
    assert len(connect_requests) == 3
    monkeypatch.delenv("OP_CONNECT_HOST")
    assert await onepassword_verified(ctx) == (
        False, "ANTHROPIC_API_KEY are op:// references but OP_CONNECT_HOST/OP_CONNECT_TOKEN are unset")


def test_a_named_endpoints_key_is_age_checked_like_the_built_in_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The readiness audit's provider_key_rotation dated the three built-in keys only: with the
    named endpoint's key the only one it was "not applicable", beside them it was never looked
    at, whatever its age."""
    for name in [n for n in os.environ if n in PROVIDER_KEYS or n.startswith(("OPSGATE_", KEY_ENV))]:
        monkeypatch.delenv(name)
    now = datetime(2026, 12, 5, tzinfo=UTC)
    ctx = Context(_endpoint_settings(tmp_path, "http://127.0.0.1:9/deepseek"), create_engine("sqlite://"),
                  ManualClock(now), tmp_path)
    monkeypatch.setenv(KEY_ENV, "sk-" + secrets.token_hex(24))  # pragma: allowlist secret (generated)
    assert provider_key_rotation(ctx) == (
        False, "LOCAL_KEY: no LOCAL_KEY_ROTATED_AT, so its age is unknown (policy 30 days)")
    monkeypatch.setenv(f"{KEY_ENV}_ROTATED_AT", (now - timedelta(days=45)).isoformat())
    assert provider_key_rotation(ctx) == (False, "LOCAL_KEY: rotated 45 days ago (policy 30 days)")
    monkeypatch.setenv(f"{KEY_ENV}_ROTATED_AT", (now - timedelta(days=10)).isoformat())
    assert provider_key_rotation(ctx) == (True, "LOCAL_KEY: rotated 10 days ago (policy 30 days)")
    monkeypatch.setenv(KEY_ENV, REFERENCE)
    assert provider_key_rotation(ctx) == (True, "LOCAL_KEY: dated by 1Password (policy 30 days)")
