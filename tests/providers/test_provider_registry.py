"""build_providers wires the three adapters from Settings."""

from __future__ import annotations

import pytest

from opsgate.config import Settings
from opsgate.providers.anthropic import AnthropicProvider
from opsgate.providers.base import CompletionRequest
from opsgate.providers.errors import AuthenticationFailed
from opsgate.providers.gemini import GeminiProvider
from opsgate.providers.openai_compat import OpenAICompatProvider
from opsgate.providers.registry import (
    ANTHROPIC_DEFAULT_MODEL,
    DEEPSEEK_DEFAULT_MODEL,
    DEFAULT_MODELS,
    GEMINI_DEFAULT_MODEL,
    build_providers,
)

REQUEST = CompletionRequest(system="s", user="u", max_tokens=8)


def _settings(**values) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.fixture(autouse=True)
def _no_provider_env(monkeypatch, tmp_path) -> None:
    for name in ("ANTHROPIC", "DEEPSEEK", "GEMINI"):
        for suffix in ("API_KEY", "BASE_URL"):
            monkeypatch.delenv(f"{name}_{suffix}", raising=False)
            monkeypatch.delenv(f"OPSGATE_{name}_{suffix}", raising=False)
    (tmp_path / "empty.toml").write_text("")  # no providers, routes or prices
    monkeypatch.setenv("OPSGATE_CONFIG", str(tmp_path / "empty.toml"))


def test_default_models() -> None:
    assert DEFAULT_MODELS == {
        "anthropic": ANTHROPIC_DEFAULT_MODEL,
        "deepseek": DEEPSEEK_DEFAULT_MODEL,
        "gemini": GEMINI_DEFAULT_MODEL,
    }
    assert (ANTHROPIC_DEFAULT_MODEL, DEEPSEEK_DEFAULT_MODEL, GEMINI_DEFAULT_MODEL) == (
        "claude-opus-5",  # issue 13: models the providers serve today
        "deepseek-flash",
        "gemini-3.8-flash",
    )


async def test_builds_all_three_and_keys_reach_the_right_headers(
    session, upstream, anthropic_key, deepseek_key, gemini_key
) -> None:
    settings = _settings(
        ANTHROPIC_API_KEY=anthropic_key,
        ANTHROPIC_BASE_URL=upstream.base_url,
        DEEPSEEK_API_KEY=deepseek_key,
        DEEPSEEK_BASE_URL=upstream.base_url,
        GEMINI_API_KEY=gemini_key,
        GEMINI_BASE_URL=upstream.base_url,
    )
    providers = build_providers(settings, session)
    assert isinstance(providers["anthropic"], AnthropicProvider)
    assert isinstance(providers["deepseek"], OpenAICompatProvider)
    assert isinstance(providers["gemini"], GeminiProvider)
    assert {name: p.name for name, p in providers.items()} == {
        "anthropic": "anthropic",
        "deepseek": "deepseek",
        "gemini": "gemini",
    }

    upstream.reply(
        200,
        {
            "content": [{"type": "text", "text": "a"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 1, "output_tokens": 1},
        },
    )
    upstream.reply(
        200,
        {
            "id": "d",
            "choices": [{"message": {"content": "d"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1},
        },
    )
    upstream.reply(
        200,
        {
            "candidates": [{"content": {"parts": [{"text": "g"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1},
        },
    )
    texts = [
        (await providers[name].complete(REQUEST, DEFAULT_MODELS[name], timeout_s=5)).text
        for name in ("anthropic", "deepseek", "gemini")
    ]
    assert texts == ["a", "d", "g"]
    claude, deepseek, gemini = upstream.requests
    assert claude.headers["x-api-key"] == anthropic_key
    assert deepseek.headers["Authorization"] == f"Bearer {deepseek_key}"
    assert gemini.headers["x-goog-api-key"] == gemini_key
    assert gemini.path == f"/v1beta/models/{GEMINI_DEFAULT_MODEL}:generateContent"


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        ("anthropic", "ANTHROPIC_API_KEY"),
        ("deepseek", "DEEPSEEK_API_KEY"),
        ("gemini", "GEMINI_API_KEY"),
    ],
)
async def test_unset_keys_build_providers_that_fail_without_network(
    session, name, variable
) -> None:
    providers = build_providers(_settings(), session)
    with pytest.raises(AuthenticationFailed) as info:
        await providers[name].complete(REQUEST, DEFAULT_MODELS[name], timeout_s=5)
    assert info.value.detail == f"{variable} is not set"
    assert info.value.provider == name


async def test_deepseek_is_built_in_json_object_mode(session, upstream) -> None:
    settings = _settings(DEEPSEEK_API_KEY="sk-test", DEEPSEEK_BASE_URL=upstream.base_url)
    upstream.reply(
        200,
        {
            "id": "d",
            "choices": [{"message": {"content": '{"a": 1}'}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1},
        },
    )
    request = CompletionRequest(system="s", user="u", max_tokens=8, json_schema={"type": "object"})
    done = await build_providers(settings, session)["deepseek"].complete(
        request, "deepseek-chat", 5
    )
    assert done.data == {"a": 1}
    assert upstream.requests[0].body["response_format"] == {"type": "json_object"}


def test_an_insecure_base_url_is_a_config_error(session) -> None:
    with pytest.raises(ValueError, match="plain http"):
        build_providers(_settings(GEMINI_BASE_URL="http://gemini.internal.example"), session)
