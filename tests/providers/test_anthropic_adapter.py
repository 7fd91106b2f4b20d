"""Anthropic Messages adapter against a loopback server with bodies in the documented format."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from opsgate.clock import ManualClock
from opsgate.providers.anthropic import AnthropicProvider
from opsgate.providers.base import CompletionRequest, FinishReason, Usage
from opsgate.providers.errors import (
    AuthenticationFailed,
    BillingFailed,
    ContentFiltered,
    EmptyAnswer,
    IncompleteAnswer,
    InvalidRequest,
    ModelUnavailable,
    MalformedResponse,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ServerError,
    SpendCapReached,
)

SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["urgent", "later"]},
        "score": {"type": "number"},
    },
    "required": ["label", "score"],
}
JSON_REQUEST = CompletionRequest(
    system="Classify the email.",
    user="Server down!",
    max_tokens=256,
    json_schema=SCHEMA,
    schema_name="classification",
)
TEXT_REQUEST = CompletionRequest(system="Be brief.", user="Say hi.", max_tokens=64)
MODEL = "claude-opus-4-5"


def message(content, stop_reason="end_turn", usage=None):
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-opus-4-5-20251101",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage or {"input_tokens": 25, "output_tokens": 9},
    }


def error(kind, message_text="Something went wrong on our side: secret-internal-detail"):
    return {
        "type": "error",
        "error": {"type": kind, "message": message_text},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }


@pytest.fixture
def clock():
    return ManualClock(datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC))


@pytest.fixture
def claude(session, upstream, anthropic_key, clock):
    return AnthropicProvider(session, anthropic_key, base_url=upstream.base_url, clock=clock)


async def test_json_answer_comes_from_the_forced_tool_with_all_usage_fields(
    claude, upstream, anthropic_key
) -> None:
    upstream.reply(
        200,
        message(
            [
                {
                    "type": "tool_use",
                    "id": "toolu_01A09q90qw90lq917835lq9",
                    "name": "classification",
                    "input": {"label": "urgent", "score": 0.93},
                }
            ],
            stop_reason="tool_use",
            usage={
                "input_tokens": 2095,
                "cache_creation_input_tokens": 2051,
                "cache_read_input_tokens": 1800,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 2000,
                    "ephemeral_1h_input_tokens": 51,
                },
                "output_tokens": 503,
                "service_tier": "standard",
            },
        ),
        headers={"request-id": "req_018EeWyXxfu5pfWkrYcMdjWG"},
    )
    done = await claude.complete(JSON_REQUEST, MODEL, timeout_s=5)
    assert done.data == {"label": "urgent", "score": 0.93}
    assert done.text == '{"label":"urgent","score":0.93}'
    assert done.usage == Usage(
        input_tokens=2095,
        output_tokens=503,
        cache_write_tokens=2000,
        cache_write_1h_tokens=51,
        cache_read_tokens=1800,
    )
    assert done.finish_reason is FinishReason.TOOL_USE
    assert done.raw_finish_reason == "tool_use"
    assert done.provider_request_id == "req_018EeWyXxfu5pfWkrYcMdjWG"
    assert (done.provider, done.model) == ("anthropic", MODEL)
    assert done.provider_latency_ms > 0

    sent = upstream.requests[0]
    assert (sent.method, sent.path, sent.query) == ("POST", "/v1/messages", "")
    assert sent.headers["x-api-key"] == anthropic_key
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["Content-Type"] == "application/json"
    assert "Authorization" not in sent.headers
    assert anthropic_key not in sent.raw_url
    assert sent.body["model"] == MODEL
    assert sent.body["max_tokens"] == 256
    assert sent.body["system"] == "Classify the email."
    assert sent.body["messages"] == [{"role": "user", "content": "Server down!"}]
    assert sent.body["tools"][0]["name"] == "classification"
    assert sent.body["tools"][0]["input_schema"] == SCHEMA
    assert sent.body["tool_choice"] == {"type": "tool", "name": "classification"}


async def test_text_answer_and_unsplit_cache_writes_count_as_five_minute(claude, upstream) -> None:
    upstream.reply(
        200,
        message(
            [{"type": "text", "text": "Hi"}, {"type": "text", "text": " there."}],
            usage={
                "input_tokens": 12,
                "output_tokens": 4,
                "cache_creation_input_tokens": 300,
                "cache_read_input_tokens": None,
            },
        ),
    )
    done = await claude.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert done.text == "Hi there."
    assert done.data is None
    assert done.usage == Usage(input_tokens=12, output_tokens=4, cache_write_tokens=300)
    assert done.finish_reason is FinishReason.STOP
    assert "tools" not in upstream.requests[0].body
    assert "tool_choice" not in upstream.requests[0].body


@pytest.mark.parametrize(
    ("split", "write_5m", "write_1h"),
    [
        ({"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}, 1000, 0),  # stale: all 5m
        ({"ephemeral_1h_input_tokens": 400}, 600, 400),  # 5m field missing: the rest is 5m
        ({"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 300}, 700, 300),  # partial
        ({"ephemeral_5m_input_tokens": 900, "ephemeral_1h_input_tokens": 300}, 900, 300),  # above: as split
    ],
)
async def test_cache_writes_the_breakdown_misses_are_billed_as_five_minute_writes(
    claude, upstream, split, write_5m, write_1h
) -> None:
    usage = {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 1000,
             "cache_creation": split}
    upstream.reply(200, message([{"type": "text", "text": "Hi"}], usage=usage))
    done = await claude.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert done.usage == Usage(input_tokens=10, output_tokens=5, cache_write_tokens=write_5m,
                               cache_write_1h_tokens=write_1h)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("end_turn", FinishReason.STOP),
        ("stop_sequence", FinishReason.STOP),
        ("brand_new_reason", FinishReason.UNKNOWN),
    ],
)
async def test_stop_reasons_map_without_loss(claude, upstream, raw, expected) -> None:
    upstream.reply(200, message([{"type": "text", "text": "ok"}], stop_reason=raw))
    done = await claude.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert done.finish_reason is expected
    assert done.raw_finish_reason == raw


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("max_tokens", FinishReason.LENGTH),
        ("pause_turn", FinishReason.PAUSE),
        ("model_context_window_exceeded", FinishReason.CONTEXT_EXCEEDED),
    ],
)
async def test_a_cut_off_answer_is_incomplete_even_when_its_tool_input_is_valid(
    claude, upstream, raw, expected
) -> None:
    # tester-wire F2: a schema-valid tool input whose text was cut mid-sentence came back as a 200
    tool = {"type": "tool_use", "id": "toolu_1", "name": "classification",
            "input": {"label": "urgent", "score": 0.9}}
    upstream.reply(200, message([tool], stop_reason=raw, usage={"input_tokens": 25, "output_tokens": 256}),
                   headers={"request-id": "req_cut"})
    with pytest.raises(IncompleteAnswer) as info:
        await claude.complete(JSON_REQUEST, MODEL, timeout_s=5)
    cut = info.value
    assert (cut.status, cut.code, cut.kind) == (502, "provider_bad_response", "incomplete_answer")
    assert cut.finish_reason is expected
    assert cut.detail == f"the answer stopped before it was complete ({raw})"
    assert cut.usage == Usage(input_tokens=25, output_tokens=256)  # still billed as reported
    assert (cut.http_status, cut.provider_request_id) == (200, "req_cut")
    assert (cut.retryable, cut.fallback) == (False, True)


async def test_refusal_is_content_filtered(claude, upstream) -> None:
    upstream.reply(
        200,
        message([{"type": "text", "text": "I can't help."}], stop_reason="refusal"),
        headers={"request-id": "req_r"},
    )
    with pytest.raises(ContentFiltered) as info:
        await claude.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert info.value.detail == "the model refused (refusal)"
    assert info.value.provider_request_id == "req_r"


@pytest.mark.parametrize(
    ("request_", "content"),
    [
        (TEXT_REQUEST, []),
        (TEXT_REQUEST, [{"type": "text", "text": "  \n"}]),
        (JSON_REQUEST, [{"type": "text", "text": "Here is the classification."}]),
    ],
)
async def test_no_text_or_tool_input_is_an_empty_answer(
    claude, upstream, request_, content
) -> None:
    upstream.reply(200, message(content))
    with pytest.raises(EmptyAnswer):
        await claude.complete(request_, MODEL, timeout_s=5)


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>502 Bad Gateway</body></html>",
        b'["not", "an", "object"]',
        {"type": "message", "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn"},
        message([{"type": "text", "text": "hi"}], usage={"input_tokens": "12", "output_tokens": 1}),
        {"type": "message", "content": "hi", "usage": {"input_tokens": 1, "output_tokens": 1}},
    ],
)
async def test_undocumented_bodies_are_malformed(claude, upstream, body) -> None:
    upstream.reply(200, body)
    with pytest.raises(MalformedResponse):
        await claude.complete(TEXT_REQUEST, MODEL, timeout_s=5)


async def test_tool_use_for_another_tool_is_malformed(claude, upstream) -> None:
    upstream.reply(
        200,
        message(
            [{"type": "tool_use", "id": "t", "name": "other", "input": {}}], stop_reason="tool_use"
        ),
    )
    with pytest.raises(MalformedResponse):
        await claude.complete(JSON_REQUEST, MODEL, timeout_s=5)


@pytest.mark.parametrize(
    ("status", "kind", "cls"),
    [
        (400, "invalid_request_error", InvalidRequest),
        (401, "authentication_error", AuthenticationFailed),
        (402, "billing_error", BillingFailed),
        (403, "permission_error", AuthenticationFailed),
        (404, "not_found_error", ModelUnavailable),  # issue 13: a retired model
        (413, "request_too_large", InvalidRequest),
        (500, "api_error", ServerError),
        (503, "api_error", Overloaded),
        (504, "timeout_error", ServerError),
        (529, "overloaded_error", Overloaded),
    ],
)
async def test_error_statuses_map_to_typed_errors(
    claude, upstream, anthropic_key, assert_safe_detail, status, kind, cls
) -> None:
    upstream.reply(status, error(kind), headers={"request-id": "req_err"})
    with pytest.raises(ProviderError) as info:
        await claude.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert type(info.value) is cls
    assert info.value.http_status == status
    assert info.value.detail == f"HTTP {status} {kind}"
    assert info.value.provider_request_id == "req_err"
    assert_safe_detail(info.value, anthropic_key, "secret-internal-detail")


async def test_error_request_id_falls_back_to_the_body(claude, upstream) -> None:
    upstream.reply(500, error("api_error"))
    with pytest.raises(ServerError) as info:
        await claude.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert info.value.provider_request_id == "req_011CSHoEeqs5C35K2UUqR7Fy"


async def test_non_json_error_body_still_maps_by_status(claude, upstream) -> None:
    upstream.reply(529, b"<html>upstream overloaded at internal-host-17</html>")
    with pytest.raises(Overloaded) as info:
        await claude.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert info.value.detail == "HTTP 529"


async def test_429_honours_retry_after(claude, upstream) -> None:
    upstream.reply(429, error("rate_limit_error"), headers={"retry-after": "7"})
    with pytest.raises(RateLimited) as info:
        await claude.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert info.value.retry_after == 7.0
    assert info.value.retryable is True


async def test_429_without_retry_after_waits_for_the_exhausted_bucket(
    claude, upstream, clock
) -> None:
    now = clock.now()
    upstream.reply(
        429,
        error("rate_limit_error"),
        headers={
            "anthropic-ratelimit-requests-remaining": "40",
            "anthropic-ratelimit-requests-reset": (now + timedelta(seconds=50)).isoformat(),
            "anthropic-ratelimit-tokens-remaining": "0",
            "anthropic-ratelimit-tokens-reset": (now + timedelta(seconds=12)).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
        },
    )
    with pytest.raises(RateLimited) as info:
        await claude.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert info.value.retry_after == 12.0


async def test_429_with_resets_but_no_exhausted_bucket_waits_for_the_latest(
    claude, upstream, clock
) -> None:
    now = clock.now()
    upstream.reply(
        429,
        error("rate_limit_error"),
        headers={
            "anthropic-ratelimit-requests-reset": (now + timedelta(seconds=3)).isoformat(),
            "anthropic-ratelimit-tokens-reset": (now + timedelta(seconds=9.5)).isoformat(),
        },
    )
    with pytest.raises(RateLimited) as info:
        await claude.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert info.value.retry_after == 9.5


async def test_429_without_any_wait_is_the_spend_cap(claude, upstream) -> None:
    upstream.reply(
        429, error("rate_limit_error", "You have reached your specified API usage limits.")
    )
    with pytest.raises(SpendCapReached) as info:
        await claude.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert info.value.retryable is False
    assert info.value.retry_after is None
    assert info.value.detail == "HTTP 429 rate_limit_error"


async def test_missing_key_fails_without_a_network_call(session, upstream) -> None:
    claude = AnthropicProvider(session, None, base_url=upstream.base_url)
    with pytest.raises(AuthenticationFailed, match="^ANTHROPIC_API_KEY is not set$"):
        await claude.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert upstream.requests == []


async def test_timeout_is_provider_timeout(claude, upstream) -> None:
    upstream.reply(200, message([{"type": "text", "text": "late"}]), delay_s=1.0)
    with pytest.raises(ProviderTimeout) as info:
        await claude.complete(TEXT_REQUEST, MODEL, timeout_s=0.2)
    assert info.value.kind == "timeout"


def test_plain_http_to_a_remote_host_is_refused_at_construction(session) -> None:
    with pytest.raises(ValueError, match="plain http"):
        AnthropicProvider(session, "k", base_url="http://api.anthropic.com")


async def test_count_tokens_sends_the_request_without_sampling_fields(claude, upstream, anthropic_key) -> None:
    upstream.reply(200, {"input_tokens": 1234})
    counted = await claude.count_tokens(JSON_REQUEST, MODEL, 5)
    assert counted.tokens == 1234  # the count holds the tool-use system prompt: nothing added
    [sent] = upstream.requests
    assert sent.path == "/v1/messages/count_tokens"
    assert sent.headers["x-api-key"] == anthropic_key and sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body == {
        "model": MODEL,
        "system": "Classify the email.",
        "messages": [{"role": "user", "content": "Server down!"}],
        "tools": [{"name": "classification", "input_schema": SCHEMA,
                   "description": "Record the answer. Its input is the complete answer object."}],
        "tool_choice": {"type": "tool", "name": "classification"},
    }
    upstream.reply(200, {"input_tokens": 12})
    assert (await claude.count_tokens(TEXT_REQUEST, MODEL, 5)).tokens == 12


async def test_count_tokens_failures_are_typed(claude, upstream) -> None:
    upstream.reply(529, error("overloaded_error"))
    with pytest.raises(Overloaded):
        await claude.count_tokens(JSON_REQUEST, MODEL, 5)
    upstream.reply(200, {"tokens": 5})
    with pytest.raises(MalformedResponse):
        await claude.count_tokens(JSON_REQUEST, MODEL, 5)
    upstream.reply(200, {"input_tokens": 1}, delay_s=1)
    with pytest.raises(ProviderTimeout):
        await claude.count_tokens(JSON_REQUEST, MODEL, 0.2)
