"""Typed provider answers (issue 14, item 5): each wire format's content-policy refusal is
:class:`ContentFiltered` (422 ``content_filtered``) and its context-length refusal is
:class:`ContextLengthExceeded` (413 ``input_too_large``, falls back), over real HTTP to a loopback
upstream answering the providers' own error bodies. The provider's message is only read, never
put into the client-visible detail."""

from __future__ import annotations

from dataclasses import replace

import pytest

from opsgate.providers.anthropic import AnthropicProvider
from opsgate.providers.base import CompletionRequest
from opsgate.providers.errors import (
    ContentFiltered,
    ContextLengthExceeded,
    EmptyAnswer,
    InvalidRequest,
    MalformedResponse,
    ProviderError,
)
from opsgate.providers.gemini import GeminiProvider
from opsgate.providers.openai_compat import OpenAICompatProvider

REQUEST = CompletionRequest(system="Classify the email.", user="Invoice overdue.", max_tokens=64)


@pytest.fixture
def claude(session, upstream, anthropic_key):
    return AnthropicProvider(session, anthropic_key, base_url=upstream.base_url)


@pytest.fixture
def deepseek(session, upstream, deepseek_key):
    return OpenAICompatProvider("deepseek", session, upstream.base_url, deepseek_key, json_mode="json_object")


@pytest.fixture
def gemini(session, upstream, gemini_key):
    return GeminiProvider(session, gemini_key, base_url=upstream.base_url)


def anthropic_error(message: str) -> dict:
    return {"type": "error", "error": {"type": "invalid_request_error", "message": message},
            "request_id": "req_011CaxpBxEpLvE6AvvuDD5BW"}


def openai_error(message: str, code: str | None = "invalid_request_error", **extra: object) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code, **extra}}


def google_error(message: str) -> dict:
    return {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT",
                      "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": []}]}}


async def _raised(provider, model: str) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await provider.complete(REQUEST, model, timeout_s=5)
    return info.value


# -------------------------------------------------------------------------- content policy


async def test_anthropic_content_policy_400_is_content_filtered(claude, upstream, assert_safe_detail) -> None:
    upstream.reply(400, anthropic_error("Output blocked by content filtering policy"),
                   headers={"request-id": "req_policy"})
    error = await _raised(claude, "claude-opus-5")
    assert type(error) is ContentFiltered
    assert (error.code, error.status, error.http_status) == ("content_filtered", 422, 400)
    assert error.detail == "HTTP 400 invalid_request_error: the provider refused the content (content policy)"
    assert error.provider_request_id == "req_policy"
    assert (error.retryable, error.fallback) == (False, False)
    assert_safe_detail(error, "Output blocked")


async def test_deepseek_content_exists_risk_is_content_filtered(deepseek, upstream, assert_safe_detail) -> None:
    upstream.reply(400, openai_error("Content Exists Risk"), headers={"x-request-id": "ds-risk"})
    error = await _raised(deepseek, "deepseek-v4.1-flash")
    assert type(error) is ContentFiltered
    assert error.detail == "HTTP 400 invalid_request_error: the provider refused the content (content policy)"
    assert error.provider_request_id == "ds-risk"
    assert_safe_detail(error, "Content Exists Risk")


@pytest.mark.parametrize(
    "body",
    [
        # Azure OpenAI's prompt filter: code content_filter, innererror ResponsibleAIPolicyViolation
        {"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
                              "management policy.", "type": None, "param": "prompt", "code": "content_filter",
                   "status": 400, "innererror": {"code": "ResponsibleAIPolicyViolation",
                                                 "content_filter_result": {"violence": {"filtered": True}}}}},
        openai_error("Your request was rejected as a result of our safety system.", "content_policy_violation"),
    ],
    ids=["azure-content-filter", "openai-content-policy-violation"],
)
async def test_openai_compatible_policy_codes_are_content_filtered(deepseek, upstream, body) -> None:
    upstream.reply(400, body)
    error = await _raised(deepseek, "gpt-compatible")
    assert type(error) is ContentFiltered
    assert error.detail.endswith("the provider refused the content (content policy)")
    assert "safety system" not in error.detail and "Azure" not in error.detail


async def test_openai_compatible_refusal_field_is_content_filtered(deepseek, upstream) -> None:
    choice = {"index": 0, "finish_reason": "stop",
              "message": {"role": "assistant", "content": None, "refusal": "I can't help with that."}}
    upstream.reply(200, {"id": "chatcmpl-1", "model": "m", "choices": [choice],
                         "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}})
    error = await _raised(deepseek, "m")
    assert type(error) is ContentFiltered
    assert (error.detail, error.http_status, error.provider_request_id) == (
        "the model refused (refusal)", 200, "chatcmpl-1")


async def test_gemini_blocked_answer_without_content_is_content_filtered(gemini, upstream) -> None:
    candidate = {"finishReason": "SAFETY", "index": 0,
                 "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": True}]}
    upstream.reply(200, {"candidates": [candidate], "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
                         "responseId": "gem-1"})
    error = await _raised(gemini, "gemini-3.8-flash")
    assert type(error) is ContentFiltered
    assert (error.code, error.status, error.detail) == ("content_filtered", 422, "the answer was blocked (SAFETY)")


@pytest.mark.parametrize("reason", ["PROHIBITED_CONTENT", "BLOCKLIST", "OTHER"])
async def test_gemini_every_block_reason_is_content_filtered(gemini, upstream, reason) -> None:
    upstream.reply(200, {"promptFeedback": {"blockReason": reason},
                         "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}})
    error = await _raised(gemini, "gemini-3.8-flash")
    assert type(error) is ContentFiltered
    assert error.detail == f"the prompt was blocked ({reason})"


# -------------------------------------------------------------------------- context length


@pytest.mark.parametrize(
    "message",
    ["prompt is too long: 208656 tokens > 200000 maximum",
     "input length and `max_tokens` exceed context limit: 188240 + 21333 > 200000, decrease input length "
     "or `max_tokens` and try again"],
    ids=["prompt-too-long", "exceed-context-limit"],
)
async def test_anthropic_prompt_too_long_is_context_length(claude, upstream, message, assert_safe_detail) -> None:
    upstream.reply(400, anthropic_error(message), headers={"request-id": "req_long"})
    error = await _raised(claude, "claude-opus-5")
    assert type(error) is ContextLengthExceeded
    assert (error.code, error.status, error.kind) == ("input_too_large", 413, "context_length")
    assert error.detail == "HTTP 400 invalid_request_error: the prompt exceeds the model's context window"
    assert (error.retryable, error.fallback) == (False, True)
    assert_safe_detail(error, "208656", "188240")


@pytest.mark.parametrize(
    "body",
    [
        openai_error("This model's maximum context length is 131072 tokens. However, you requested 140000 tokens "
                     "(139000 in the messages, 1000 in the completion). Please reduce the length of the messages "
                     "or completion."),
        openai_error("This model's maximum context length is 128000 tokens. However, your messages resulted in "
                     "130000 tokens.", "context_length_exceeded"),
    ],
    ids=["deepseek-message", "openai-code"],
)
async def test_openai_compatible_context_length_is_context_length(deepseek, upstream, body) -> None:
    upstream.reply(400, body)
    error = await _raised(deepseek, "deepseek-v4.1-flash")
    assert type(error) is ContextLengthExceeded
    assert error.detail.endswith("the prompt exceeds the model's context window")
    assert "131072" not in error.detail and "128000" not in error.detail


async def test_gemini_input_token_count_is_context_length(gemini, upstream) -> None:
    upstream.reply(400, google_error("The input token count (1200293) exceeds the maximum number of tokens "
                                     "allowed (1048576)."), headers={"x-goog-request-id": "g-long"})
    error = await _raised(gemini, "gemini-3.8-flash")
    assert type(error) is ContextLengthExceeded
    assert error.detail == "HTTP 400 INVALID_ARGUMENT: the prompt exceeds the model's context window"
    assert error.provider_request_id == "g-long"


@pytest.mark.parametrize(
    ("wire", "body"),
    [
        ("anthropic", anthropic_error("messages: roles must alternate between \"user\" and \"assistant\"")),
        ("openai", openai_error("Invalid max_tokens value, the valid range of max_tokens is [1, 8192]")),
        ("gemini", google_error("Invalid JSON payload received. Unknown name \"foo\": Cannot find field.")),
    ],
)
async def test_other_400s_stay_provider_rejected(claude, deepseek, gemini, upstream, wire, body) -> None:
    upstream.reply(400, body)
    provider = {"anthropic": claude, "openai": deepseek, "gemini": gemini}[wire]
    error = await _raised(provider, "some-model")
    assert type(error) is InvalidRequest
    assert (error.code, error.status) == ("provider_rejected", 502)


# -------------------------------------------------------------------------- the served model of an unusable 200


SERVED_UNUSABLE = [
    # (wire format, model asked, body of a 200 that cannot be used, error class, model it names)
    ("anthropic", "claude-opus-5",
     {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-opus-4-1-20250805",
      "content": [], "stop_reason": "refusal", "usage": {"input_tokens": 30, "output_tokens": 2}},
     ContentFiltered, "claude-opus-4-1-20250805"),
    ("anthropic", "claude-opus-5",
     {"id": "msg_2", "type": "message", "role": "assistant", "model": "claude-opus-4-1-20250805",
      "content": [], "stop_reason": "end_turn", "usage": {"input_tokens": 30, "output_tokens": 0}},
     EmptyAnswer, "claude-opus-4-1-20250805"),
    ("openai", "deepseek-flash",
     {"id": "c1", "model": "deepseek-v4-pro", "choices": [{"index": 0, "finish_reason": "content_filter",
                                                          "message": {"role": "assistant", "content": ""}}],
      "usage": {"prompt_tokens": 20, "completion_tokens": 0, "total_tokens": 20}},
     ContentFiltered, "deepseek-v4-pro"),
    ("openai", "deepseek-flash",
     {"id": "c2", "model": "deepseek-v4-pro", "choices": [],
      "usage": {"prompt_tokens": 20, "completion_tokens": 0, "total_tokens": 20}},
     EmptyAnswer, "deepseek-v4-pro"),
    ("openai", "deepseek-flash",
     {"id": "c3", "model": "deepseek-v4-pro", "choices": [{"index": 0, "finish_reason": "stop",
                                                          "message": {"role": "assistant", "content": "{not json"}}],
      "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}},
     MalformedResponse, "deepseek-v4-pro"),
    ("gemini", "gemini-2.5-flash",
     {"candidates": [{"finishReason": "SAFETY", "index": 0}], "modelVersion": "gemini-3.5-flash",
      "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}, "responseId": "g1"},
     ContentFiltered, "gemini-3.5-flash"),
]


@pytest.mark.parametrize(("wire", "model", "body", "error_class", "served"), SERVED_UNUSABLE,
                         ids=[f"{s[0]}-{s[3].__name__}" for s in SERVED_UNUSABLE])
async def test_an_unusable_200_names_the_model_that_served_it(
    claude, deepseek, gemini, upstream, wire, model, body, error_class, served,
) -> None:
    """Tester-wire F8: a refusal, an empty or a malformed 200 is billed at the model that
    answered, so the error carries it beside the usage (it was read only from good answers)."""
    upstream.reply(200, body)
    provider = {"anthropic": claude, "openai": deepseek, "gemini": gemini}[wire]
    with pytest.raises(ProviderError) as raised:  # a JSON answer is asked for: "{not json" is malformed
        await provider.complete(replace(REQUEST, json_schema={"type": "object"}), model, timeout_s=5)
    error = raised.value
    assert type(error) is error_class
    assert error.served_model == served and error.usage is not None


async def test_an_unusable_200_that_is_no_json_object_names_no_model(deepseek, upstream) -> None:
    upstream.reply(200, b"[1, 2]")
    error = await _raised(deepseek, "deepseek-flash")
    assert type(error) is MalformedResponse and (error.served_model, error.usage) == (None, None)
