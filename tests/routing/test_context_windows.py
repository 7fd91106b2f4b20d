"""Context windows checked before sending (issue 14, item 5), over real HTTP to the provider
sandboxes: the window comes from the operator's ``[providers.<name>] context_window`` or the
``genai-prices`` model facts; the prompt's size is the reservation's bound plus ``max_tokens``."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from opsgate.clock import ManualClock
from opsgate.config import Settings
from opsgate.metering.prices import PriceBook, PriceTable
from opsgate.metering.worstcase import prompt_token_bound
from opsgate.providers.anthropic import AnthropicProvider
from opsgate.providers.base import CompletionRequest
from opsgate.providers.gemini import GeminiProvider
from opsgate.providers.http import make_session
from opsgate.providers.openai_compat import OpenAICompatProvider
from opsgate.routing.errors import InputTooLarge
from opsgate.routing.policy import RoutePolicy, Target
from opsgate.routing.router import Router
from opsgate.routing.windows import ContextWindows
from opsgate.sandbox import SandboxServer

BOOK = PriceBook(PriceTable.load())
SONNET = Target("anthropic", "claude-sonnet-4-5")  # 200,000 tokens in genai-prices 0.2.3
GEMINI = Target("gemini", "gemini-3.8-flash")      # 1,000,000
LOCAL = Target("local", "qwen3-8b")                # configured below
SMALL = CompletionRequest(system="Classify.", user="Invoice overdue.", max_tokens=64)
LARGE = CompletionRequest(system="Summarise.", user="ledger line\n" * 20_000, max_tokens=1024)  # 240 kB


def _windows(**configured: int) -> ContextWindows:
    return ContextWindows(prompt_token_bound, BOOK, configured)


def _policy(*chain: Target) -> RoutePolicy:
    return RoutePolicy(chain=chain, timeout_s=10, max_attempts_per_target=2, max_retry_wait_s=1)


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    async with SandboxServer() as server:
        yield server


@pytest.fixture
async def router(sandbox: SandboxServer) -> AsyncIterator[Router]:
    session = make_session()
    urls = sandbox.base_urls
    providers = {
        "anthropic": AnthropicProvider(session, "sk-ant-" + secrets.token_urlsafe(24), base_url=urls["anthropic"]),
        "gemini": GeminiProvider(session, "AIza" + secrets.token_urlsafe(26), base_url=urls["gemini"]),
        "local": OpenAICompatProvider("local", session, urls["deepseek"], "sk-" + secrets.token_hex(16),
                                      json_mode="json_object"),
    }
    yield Router(providers, ManualClock(), windows=_windows(local=4_000))
    await session.close()


def test_windows_come_from_the_configuration_then_the_model_facts() -> None:
    settings = Settings(providers={"local": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1",
                                             "context_window": 32_768}})
    windows = ContextWindows.from_settings(settings, prompt_token_bound, BOOK)
    assert windows.window(Target("local", "anything")) == 32_768
    assert windows.window(SONNET) == 200_000
    assert windows.window(GEMINI) == 1_000_000
    assert windows.window(Target("other", "unknown-model")) is None
    assert windows.needed(LARGE) == prompt_token_bound(LARGE) + 1024 > 240_000


def test_only_targets_too_small_are_ruled_out_and_never_all_of_them() -> None:
    windows = _windows(local=4_000)
    assert windows.too_small(SMALL, (LOCAL, SONNET)) == set()
    assert windows.too_small(LARGE, (SONNET, LOCAL, GEMINI)) == {SONNET, LOCAL}
    assert windows.too_small(LARGE, (SONNET, LOCAL)) == set()  # the bound rules out all: providers decide
    assert windows.too_small(LARGE, (Target("other", "unknown-model"), SONNET)) == {SONNET}


async def test_a_prompt_beyond_the_model_facts_window_skips_that_target_unsent(router, sandbox) -> None:
    routed = await router.complete(LARGE, _policy(SONNET, GEMINI))
    assert (routed.completion.provider, routed.completion.model) == ("gemini", "gemini-3.8-flash")
    assert [(a.provider, a.outcome_kind, a.http_status) for a in routed.attempts] == [
        ("anthropic", "context_window", None), ("gemini", "ok", 200)]
    stats = sandbox.stats()["providers"]
    assert (stats["anthropic"]["requests"], stats["gemini"]["requests"]) == (0, 1)


async def test_a_prompt_beyond_a_configured_window_skips_that_endpoint_unsent(router, sandbox) -> None:
    request = CompletionRequest(system="Classify.", user="x" * 5_000, max_tokens=64)  # bound 5,600 > 4,000
    routed = await router.complete(request, _policy(LOCAL, SONNET))
    assert routed.completion.provider == "anthropic"
    assert [a.outcome_kind for a in routed.attempts] == ["context_window", "ok"]
    assert sandbox.stats()["providers"]["deepseek"]["requests"] == 0


async def test_small_prompts_go_to_the_first_target(router, sandbox) -> None:
    routed = await router.complete(SMALL, _policy(LOCAL, SONNET))
    assert routed.completion.provider == "local"
    assert [a.outcome_kind for a in routed.attempts] == ["ok"]


async def test_when_the_bound_rules_out_every_target_the_providers_decide(router, sandbox) -> None:
    routed = await router.complete(LARGE, _policy(SONNET, LOCAL))  # the sandboxes' real count fits
    assert routed.completion.provider == "anthropic"
    sandbox.set_faults("context:anthropic:1000,context:deepseek:1000")
    with pytest.raises(InputTooLarge) as info:
        await router.complete(LARGE, _policy(SONNET, LOCAL))
    assert (info.value.code, info.value.status) == ("input_too_large", 413)
    assert [(a.provider, a.outcome_kind, a.http_status) for a in info.value.attempts] == [
        ("anthropic", "context_length", 400), ("local", "context_length", 400)]  # each asked once


async def test_a_skip_then_a_refusal_is_413(router, sandbox) -> None:
    sandbox.set_faults("context:gemini:1000")
    with pytest.raises(InputTooLarge) as info:
        await router.complete(LARGE, _policy(SONNET, GEMINI))
    assert [a.outcome_kind for a in info.value.attempts] == ["context_window", "context_length"]
    assert sandbox.stats()["providers"]["anthropic"]["requests"] == 0
