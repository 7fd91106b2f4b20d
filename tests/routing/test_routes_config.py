"""Routes, named providers and prices from opsgate.toml, over real HTTP (issue 13).

A loopback OpenAI-compatible endpoint (what vLLM or Ollama serve) is configured for
``email-classify`` only; it must receive the configured model name and key header, while every
other operation stays on the default chain. Configurations that cannot be served refuse start-up
with one line naming the route, the target and what is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from sqlalchemy import select
from typer.testing import CliRunner
from tests.gateways import Gateway, gateway_settings, running_gateway, stand_in_servers
from tests.paths import EXAMPLES

from opsgate.cli import app as cli_app
from opsgate.config import Settings
from opsgate.routing.policy import RouteConfigError, policies_for
from opsgate.runtime import start_runtime
from opsgate.sandbox.instance import instance_for
from opsgate.store.models import ai_operation_log, ledger_entries

runner = CliRunner()


class LoopbackChat:
    """An OpenAI-compatible ``/v1/chat/completions`` on a loopback port that records what reached
    it (model, Authorization header) and answers a schema-valid object in the documented shape."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.base_url = ""

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append((body["model"], request.headers.get("Authorization")))
        schema = body["response_format"]["json_schema"]["schema"]
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": json.dumps(instance_for(schema))}}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
        })

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> LoopbackChat:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _local_config(base_url: str) -> dict:
    return {
        "providers": {"local-vllm": {"kind": "openai-compatible", "base_url": base_url,
                                     "api_key_env": "LOCAL_VLLM_KEY"}},  # pragma: allowlist secret
        "routes": {"default": {"timeout_s": 5},
                   "email-classify": {"chain": ["local-vllm/qwen3-8b", "deepseek/deepseek-flash"]}},
        "prices": {"local-vllm/qwen3-8b": {"input": "0", "output": "0"}},
    }


@pytest.fixture
def local() -> Iterator[LoopbackChat]:
    with LoopbackChat() as server:
        yield server


@pytest.fixture
def routed_gateway(tmp_path: Path, local: LoopbackChat, monkeypatch) -> Iterator[Gateway]:
    monkeypatch.setenv("LOCAL_VLLM_KEY", "sk-local-" + secrets.token_urlsafe(24))
    settings = gateway_settings(tmp_path, **_local_config(local.base_url))
    with running_gateway(settings) as running:
        yield running


def _example(op: str) -> dict:
    from opsgate.operations.io import input_from_file

    return input_from_file(op, next(EXAMPLES.glob(f"{op}.*")), None)


def test_configured_operation_reaches_the_loopback_endpoint_with_model_and_key(routed_gateway, local, monkeypatch):
    key = os.environ["LOCAL_VLLM_KEY"]
    resp = routed_gateway.post("email-classify", _example("email-classify"))
    assert resp.status_code == 200, resp.text
    assert (resp.json()["provider"], resp.json()["model"]) == ("local-vllm", "qwen3-8b")
    assert local.seen == [("qwen3-8b", f"Bearer {key}")]
    assert resp.json()["cost_micro_usd"] == 0  # priced explicitly at 0, never by default
    assert routed_gateway.stats()["deepseek"]["requests"] == 0
    assert key not in resp.text


def test_other_operations_stay_on_the_default_chain(routed_gateway, local):
    resp = routed_gateway.post("email-compose", _example("email-compose"))
    assert resp.status_code == 200, resp.text
    assert (resp.json()["provider"], resp.json()["model"]) == ("anthropic", "claude-opus-5")
    assert local.seen == []
    assert routed_gateway.stats()["anthropic"]["requests"] == 1


def test_result_entry_names_the_price_source_and_served_model(routed_gateway, local):
    assert routed_gateway.post("email-classify", _example("email-classify")).status_code == 200
    with routed_gateway.runtime.engine.connect() as conn:
        bodies = [json.loads(b) for b in conn.execute(select(ledger_entries.c.body)).scalars()]
        row = conn.execute(select(ai_operation_log)).mappings().one()
    [result] = [b for b in bodies if b["kind"] == "result"]
    assert (result["model"], result["served_model"]) == ("qwen3-8b", "qwen3-8b")
    assert result["price_source"] == "opsgate.toml" and result["price_version"].startswith("sha256:")
    assert (row["model"], row["served_model"]) == ("qwen3-8b", "qwen3-8b")
    [config] = [b for b in bodies if b["kind"] == "routing_config"]
    assert config["routes"]["email-classify"]["targets"][0][:2] == ["local-vllm/qwen3-8b", "env LOCAL_VLLM_KEY"]
    assert len(config["digest"]) == 64


def test_route_fields_inherit_from_routes_default():
    settings = Settings(routes={"default": {"timeout_s": 7, "max_attempts_per_target": 2},
                                "email-classify": {"chain": ["gemini/gemini-3.8-flash"]}})
    policies = policies_for(settings)
    classify, compose = policies["email-classify"], policies["email-compose"]
    assert [f"{t.provider}/{t.model}" for t in classify.chain] == ["gemini/gemini-3.8-flash"]
    assert (classify.timeout_s, classify.max_attempts_per_target, classify.total_timeout_s) == (7, 2, 14)
    assert [t.provider for t in compose.chain] == ["anthropic", "deepseek", "gemini"]
    assert (compose.timeout_s, compose.max_attempts_per_target) == (7, 2)


UNKNOWN_PROVIDER = (
    "route 'email-classify', target 'local-vllm/qwen3-8b': unknown provider 'local-vllm' "
    "(known: anthropic, deepseek, gemini; add [providers.local-vllm] to the config)"
)
MISSING_PRICE = (
    "route 'email-classify', target 'local-vllm/qwen3-8b': no price "
    "(add [prices.\"local-vllm/qwen3-8b\"] with input and output in USD per million tokens)"
)


def _write_config(tmp_path: Path, config: dict) -> Path:
    lines = []
    for table, entries in config.items():
        for name, fields in entries.items():
            lines.append(f'[{table}."{name}"]')
            lines += [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
    path = tmp_path / "opsgate.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("drop", "line"),
    [("providers", UNKNOWN_PROVIDER), ("prices", MISSING_PRICE)],
    ids=["unknown-provider", "missing-price"],
)
def test_unservable_config_refuses_start_with_one_clear_line(tmp_path, monkeypatch, drop, line):
    config = {k: v for k, v in _local_config("http://127.0.0.1:9/v1").items() if k != drop}
    monkeypatch.setenv("OPSGATE_CONFIG", str(_write_config(tmp_path, config)))
    monkeypatch.setenv("OPSGATE_DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    result = runner.invoke(cli_app, ["run", "email-classify", "--sandbox",
                                     "--input", str(next(EXAMPLES.glob("email-classify.*")))])
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == f"error: {line}"
    started = stand_in_servers(monkeypatch)
    result = runner.invoke(cli_app, ["serve", "--workers", "2"])
    assert (result.exit_code, started) == (2, [])
    assert " ".join(result.output.split()) == f"error: {line}"
    with pytest.raises(RouteConfigError) as caught:
        asyncio.run(start_runtime(gateway_settings(tmp_path)))
    assert caught.value.problems == [line]
    assert not list(tmp_path.glob("*.db")) and not list(tmp_path.glob("*.sqlite"))  # nothing opened


def test_config_check_prints_every_route_and_exits_1_on_a_missing_key(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSGATE_CONFIG", str(_write_config(tmp_path, _local_config("http://127.0.0.1:9/v1"))))
    for name in ("ANTHROPIC_API_KEY", "DEEPSEEK_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.setenv(name, "k-" + secrets.token_urlsafe(16))
    monkeypatch.delenv("LOCAL_VLLM_KEY", raising=False)
    result = runner.invoke(cli_app, ["config", "check"], env={"COLUMNS": "240"})
    assert result.exit_code == 1
    out = result.output
    assert "local-vllm/qwen3-8b  key: env LOCAL_VLLM_KEY (unset)  $0/$0 per MTok (opsgate.toml" in out
    assert "anthropic/claude-opus-5  key: env ANTHROPIC_API_KEY  $5/$25 per MTok (genai-prices" in out
    assert out.count("email-classify") == 3  # the row's operation and route, and the problem line
    assert "problem: route 'email-classify', target 'local-vllm/qwen3-8b': no key (LOCAL_VLLM_KEY is not set)" in out
    monkeypatch.setenv("LOCAL_VLLM_KEY", "k-" + secrets.token_urlsafe(16))
    result = runner.invoke(cli_app, ["config", "check"], env={"COLUMNS": "240"})
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("ok: 9 operations routable")


@pytest.mark.parametrize(
    ("base_url", "sandbox", "prices", "line"),
    [
        ("http://10.0.0.5:8001/v1", False, {},
         "provider 'local-vllm': provider base URL 'http://10.0.0.5:8001/v1' uses plain http for a "
         "non-loopback host; use https"),
        ("https://vllm.example.invalid/v1", True, {},
         "provider 'local-vllm': sandbox mode calls no real provider, but "
         "https://vllm.example.invalid/v1 is not on loopback (point base_url at a loopback server, "
         "or run without --sandbox)"),
        ("http://127.0.0.1:9/v1", False, {"nope/x": {"input": "1", "output": "1"}},
         "price 'nope/x': unknown provider 'nope' (known: anthropic, deepseek, gemini, local-vllm)"),
    ],
    ids=["plain-http-remote", "sandbox-remote", "price-unknown-provider"],
)
def test_endpoint_and_price_problems_refuse_with_one_line(tmp_path, monkeypatch, base_url, sandbox, prices, line):
    config = _local_config(base_url)
    config["prices"] = {**config["prices"], **prices}
    monkeypatch.setenv("OPSGATE_CONFIG", str(_write_config(tmp_path, config)))
    monkeypatch.setenv("OPSGATE_DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    monkeypatch.setenv("LOCAL_VLLM_KEY", "local-test-key")  # pragma: allowlist secret
    args = ["run", "email-classify", "--input", str(next(EXAMPLES.glob("email-classify.*")))]
    result = runner.invoke(cli_app, [*args, "--sandbox"] if sandbox else args)
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == f"error: {line}"
    assert not list(tmp_path.glob("*.sqlite"))  # refused before anything opened


def test_a_built_in_provider_on_plain_http_to_a_remote_host_refuses_with_one_line(tmp_path, monkeypatch):
    (tmp_path / "empty.toml").write_text("")  # no providers, routes or prices
    monkeypatch.setenv("OPSGATE_CONFIG", str(tmp_path / "empty.toml"))
    monkeypatch.setenv("OPSGATE_DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://10.0.0.5:8001")
    result = runner.invoke(cli_app, ["run", "email-classify",
                                     "--input", str(next(EXAMPLES.glob("email-classify.*")))])
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == (
        "error: provider 'anthropic': provider base URL 'http://10.0.0.5:8001' uses plain http for a "
        "non-loopback host; use https")
    assert not list(tmp_path.glob("*.sqlite"))


KEY_IN_URL = "sk-live-" + secrets.token_urlsafe(24)  # pragma: allowlist secret (generated at test time)


@pytest.mark.parametrize(("base_url", "rule"), [
    (f"https://example.com/v1?api_key={KEY_IN_URL}", "provider base URL 'https://example.com/v1' must not have a query"),
    (f"https://example.com/v1#{KEY_IN_URL}", "provider base URL 'https://example.com/v1' must not have a query"),
    (f"https://me:{KEY_IN_URL}@example.com/v1", "provider base URL 'https://example.com/v1' must not contain credentials"),
    (f"ftp://example.com/v1?token={KEY_IN_URL}", "provider base URL must be an absolute https:// URL"),
    (f"example.com/v1?k={KEY_IN_URL}", "provider base URL must be an absolute https:// URL"),
    (f"http://10.0.0.5/v1?k={KEY_IN_URL}", "provider base URL 'http://10.0.0.5/v1' must not have a query"),
])
@pytest.mark.parametrize("command", [["config", "check"], ["serve"], ["variants", "list"]])
def test_a_base_url_refused_never_repeats_its_query_fragment_or_user_info(tmp_path, monkeypatch, base_url, rule, command):
    """Tester B F10: the refusal echoed the URL, key in the query included, at serve and config
    check. The rule's message repeats scheme, host and path only, and every CLI error line goes
    through the sanitizer."""
    monkeypatch.setenv("OPSGATE_CONFIG", str(_write_config(tmp_path, _local_config(base_url))))
    monkeypatch.setenv("OPSGATE_DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    monkeypatch.setenv("LOCAL_VLLM_KEY", "local-test-key")  # pragma: allowlist secret
    stand_in_servers(monkeypatch)
    result = runner.invoke(cli_app, command)
    assert result.exit_code == (1 if command == ["config", "check"] else 2)
    assert f"provider 'local-vllm': {rule}" in " ".join(result.stderr.split()), result.stderr
    assert KEY_IN_URL not in result.output and KEY_IN_URL[8:20] not in result.output


def test_a_cli_error_line_passes_through_the_sanitizer(tmp_path, monkeypatch):
    """The one-line route problems are redacted like every other sink (a chain target or price
    name is configuration text too), and a held secret's token is printed as it is, not as Rich's
    :secret: emoji."""
    from opsgate.security.sanitizer import hold_secret

    hold_secret(KEY_IN_URL)
    config = _local_config("http://127.0.0.1:9/v1")
    config["prices"] = {**config["prices"], f"nope/{KEY_IN_URL}": {"input": "1", "output": "1"}}
    monkeypatch.setenv("OPSGATE_CONFIG", str(_write_config(tmp_path, config)))
    monkeypatch.setenv("OPSGATE_DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    result = runner.invoke(cli_app, ["run", "email-classify", "--input", str(next(EXAMPLES.glob("email-classify.*")))])
    assert result.exit_code == 2 and KEY_IN_URL not in result.output
    assert re.match(r"error: price 'nope/\[REDACTED:secret:[0-9a-f]{6}\]': unknown provider 'nope'", result.stderr)
