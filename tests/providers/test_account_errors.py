"""Account-level failures that arrive as a 4xx "bad request" (tester B, finding 1): the key, the
organisation or the billing account is refused, not the request, so the router must fall back
without retrying instead of answering 502 ``provider_rejected``. Bodies are the providers' own,
as public bug reports show them, answered over real HTTP by a loopback upstream; the router test
runs the real adapters along a chain."""

from __future__ import annotations

from typing import Any

import pytest

from opsgate.clock import ManualClock
from opsgate.providers.anthropic import AnthropicProvider
from opsgate.providers.base import CompletionRequest
from opsgate.providers.errors import (
    AuthenticationFailed,
    BillingFailed,
    InvalidRequest,
    ProviderError,
    SpendCapReached,
)
from opsgate.providers.gemini import GeminiProvider
from opsgate.providers.openai_compat import OpenAICompatProvider
from opsgate.routing.policy import RoutePolicy, Target
from opsgate.routing.router import Router

REQUEST = CompletionRequest(system="Classify the email.", user="Invoice overdue.", max_tokens=64)


def anthropic_400(message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": "invalid_request_error", "message": message},
            "request_id": "req_011CZLrUfBVkVHn5T6EqQaf7"}


def google_400(status: str, message: str, reason: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": 400, "message": message, "status": status}
    if reason is not None:
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com",
             "metadata": {"service": "generativelanguage.googleapis.com"}},
            {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": message},
        ]
    return {"error": error}


CREDIT = anthropic_400("Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing "
                       "to upgrade or purchase credits.")
USAGE_LIMIT = anthropic_400("You have reached your specified API usage limits. You will regain access on "
                            "2026-04-01 at 00:00 UTC.")
DISABLED = anthropic_400("This organization has been disabled.")
KEY_INVALID = google_400("INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", "API_KEY_INVALID")
KEY_EXPIRED = google_400("INVALID_ARGUMENT", "API key expired. Please renew the API key.", "API_KEY_INVALID")
BILLING_DISABLED = google_400("INVALID_ARGUMENT", "Billing is disabled for this project.", "BILLING_DISABLED")
REGION = google_400("FAILED_PRECONDITION", "User location is not supported for the API use.")
FREE_TIER = google_400("FAILED_PRECONDITION", "Gemini API free tier is not available in your country. Please "
                       "enable billing on your project in Google AI Studio.")
GEMINI_402 = {"error": {"code": 402, "message": "Your prepayment credits are depleted.",
                        "status": "RESOURCE_EXHAUSTED"}}
QUOTA = {"error": {"message": "You exceeded your current quota, please check your plan and billing details. For "
                   "more information on this error, read the docs: "
                   "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                   "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}
HARD_LIMIT = {"error": {"code": "billing_hard_limit_reached", "message": "Billing hard limit has been reached",
                        "param": None, "type": "invalid_request_error"}}

ANTHROPIC_OK = {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-opus-5",
                "content": [{"type": "text", "text": "billing"}], "stop_reason": "end_turn",
                "usage": {"input_tokens": 12, "output_tokens": 3}}
GEMINI_OK = {"candidates": [{"content": {"role": "model", "parts": [{"text": "billing"}]}, "finishReason": "STOP"}],
             "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 3, "totalTokenCount": 15},
             "modelVersion": "gemini-3.8-flash"}
CHAT_OK = {"id": "c1", "object": "chat.completion", "model": "deepseek-flash",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "billing"}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}


@pytest.fixture
def providers(session, upstream, anthropic_key, gemini_key, deepseek_key) -> dict[str, Any]:
    return {
        "anthropic": AnthropicProvider(session, anthropic_key, base_url=upstream.base_url),
        "gemini": GeminiProvider(session, gemini_key, base_url=upstream.base_url),
        "deepseek": OpenAICompatProvider("deepseek", session, upstream.base_url, deepseek_key,
                                         json_mode="json_object"),
    }


async def _raised(provider: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await provider.complete(REQUEST, "some-model", timeout_s=5)
    return info.value


@pytest.mark.parametrize(
    ("wire", "status", "body", "cls", "detail"),
    [
        ("anthropic", 400, CREDIT, BillingFailed,
         "HTTP 400 invalid_request_error: the provider refused for billing reasons"),
        ("anthropic", 400, USAGE_LIMIT, SpendCapReached,
         "HTTP 400 invalid_request_error: the provider account's usage limit is reached"),
        ("anthropic", 400, DISABLED, AuthenticationFailed,
         "HTTP 400 invalid_request_error: the provider refused our key or account"),
        ("gemini", 400, KEY_INVALID, AuthenticationFailed,
         "HTTP 400 INVALID_ARGUMENT: the provider refused our key or account"),
        ("gemini", 400, KEY_EXPIRED, AuthenticationFailed,
         "HTTP 400 INVALID_ARGUMENT: the provider refused our key or account"),
        ("gemini", 400, BILLING_DISABLED, BillingFailed,
         "HTTP 400 INVALID_ARGUMENT: the provider refused for billing reasons"),
        ("gemini", 400, REGION, BillingFailed,
         "HTTP 400 FAILED_PRECONDITION: the provider refused for billing reasons"),
        ("gemini", 400, FREE_TIER, BillingFailed,
         "HTTP 400 FAILED_PRECONDITION: the provider refused for billing reasons"),
        ("gemini", 402, GEMINI_402, BillingFailed, "HTTP 402 RESOURCE_EXHAUSTED"),
        ("deepseek", 400, HARD_LIMIT, SpendCapReached,
         "HTTP 400 invalid_request_error: the provider account's usage limit is reached"),
        ("deepseek", 429, QUOTA, SpendCapReached,
         "HTTP 429 insufficient_quota: the provider account's usage limit is reached"),
    ],
    ids=["anthropic-credit", "anthropic-usage-limit", "anthropic-org-disabled", "gemini-key-invalid",
         "gemini-key-expired", "gemini-billing-disabled", "gemini-region", "gemini-free-tier", "gemini-402",
         "openai-hard-limit", "openai-insufficient-quota"],
)
async def test_account_failures_are_provider_side_and_fall_back(
    providers, upstream, assert_safe_detail, wire, status, body, cls, detail
) -> None:
    upstream.reply(status, body, headers={"retry-after": "20"})
    error = await _raised(providers[wire])
    assert type(error) is cls
    assert (error.fallback, error.retryable, error.http_status, error.detail) == (True, False, status, detail)
    assert error.retry_after is None  # no wait clears it: no cool-down either
    assert_safe_detail(error, "credit balance", "API key", "location", "Billing")


@pytest.mark.parametrize(
    ("wire", "body"),
    [
        ("anthropic", anthropic_400("max_tokens: Field required")),
        ("gemini", google_400("INVALID_ARGUMENT", "Invalid value at 'generation_config.temperature'")),
        ("gemini", {"error": {"code": 400, "message": "Request contains an invalid argument.",
                              "status": "INVALID_ARGUMENT",
                              "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                           "reason": "SOMETHING_ELSE", "domain": "googleapis.com"}]}}),
        ("deepseek", {"error": {"message": "Invalid max_tokens value", "type": "invalid_request_error",
                                "param": None, "code": "invalid_request_error"}}),
    ],
    ids=["anthropic", "gemini", "gemini-unknown-reason", "openai"],
)
async def test_a_plain_bad_request_stays_provider_rejected(providers, upstream, wire, body) -> None:
    upstream.reply(400, body)
    error = await _raised(providers[wire])
    assert type(error) is InvalidRequest
    assert (error.code, error.status, error.fallback) == ("provider_rejected", 502, False)


@pytest.mark.parametrize(
    ("chain", "body", "ok", "kind"),
    [
        (("anthropic", "gemini"), CREDIT, GEMINI_OK, "billing_failed"),
        (("anthropic", "deepseek"), USAGE_LIMIT, CHAT_OK, "spend_cap"),
        (("gemini", "deepseek"), KEY_INVALID, CHAT_OK, "authentication_failed"),
        (("gemini", "anthropic"), REGION, ANTHROPIC_OK, "billing_failed"),
    ],
    ids=["anthropic-credit", "anthropic-usage-limit", "gemini-key-invalid", "gemini-region"],
)
async def test_the_router_falls_back_at_once_after_an_account_failure(
    providers, upstream, chain, body, ok, kind
) -> None:
    upstream.reply(400, body)
    upstream.reply(200, ok)
    clock = ManualClock()
    router = Router(providers, clock, failure_threshold=100)
    policy = RoutePolicy(chain=tuple(Target(p, "m-1") for p in chain), timeout_s=5.0,
                         max_attempts_per_target=3, max_retry_wait_s=30.0)
    routed = await router.complete(REQUEST, policy)
    assert [(a.provider, a.outcome_kind, a.http_status) for a in routed.attempts] == [
        (chain[0], kind, 400), (chain[1], "ok", 200)]
    assert routed.completion.provider == chain[1]
    assert len(upstream.requests) == 2


async def test_insufficient_quota_is_asked_once_then_the_chain_falls_back(providers, upstream) -> None:
    """Tester B finding 12: the custom endpoint received 3 requests (two retries) before."""
    upstream.reply(429, QUOTA)
    upstream.reply(200, ANTHROPIC_OK)
    router = Router(providers, ManualClock(), failure_threshold=100)
    policy = RoutePolicy(chain=(Target("deepseek", "m-1"), Target("anthropic", "m-2")), timeout_s=5.0,
                         max_attempts_per_target=3, max_retry_wait_s=30.0)
    routed = await router.complete(REQUEST, policy)
    assert [(a.provider, a.outcome_kind, a.http_status) for a in routed.attempts] == [
        ("deepseek", "spend_cap", 429), ("anthropic", "ok", 200)]
    assert [r.path for r in upstream.requests] == ["/chat/completions", "/v1/messages"]
