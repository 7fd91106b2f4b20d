"""Provider keys go through the secrets layer at start-up: an ``op://`` reference resolved by the
loopback 1Password Connect stand-in reaches the provider sandbox as the request's key header, and
the ``secret_access`` ledger entry comes before the first ``intent``."""

from __future__ import annotations

import json
import secrets
import uuid
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select
from tests.gateways import gateway_settings
from tests.paths import EXAMPLES
from tests.security.op_connect import TOKEN, VALUE

import opsgate.sandbox.anthropic as anthropic_sandbox
from opsgate.operations.io import input_from_file
from opsgate.pipeline import Call
from opsgate.runtime import start_runtime
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
