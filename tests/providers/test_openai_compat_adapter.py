"""OpenAI-compatible Chat Completions adapter (DeepSeek json_object, vLLM-style json_schema)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from opsgate.clock import ManualClock
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
)
from opsgate.providers.openai_compat import OpenAICompatProvider

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "reason": {"type": "string"}},
    "required": ["label", "reason"],
    "additionalProperties": False,
}
JSON_REQUEST = CompletionRequest(
    system="Classify the email.",
    user="Invoice overdue.",
    max_tokens=300,
    json_schema=SCHEMA,
    schema_name="classification",
    temperature=0.0,
)
TEXT_REQUEST = CompletionRequest(system="", user="Say hi.", max_tokens=32)
ANSWER = {"label": "billing", "reason": "mentions an invoice"}


def chat(content, finish_reason="stop", usage=None, choices=None):
    return {
        "id": "930c60df-bf64-41c9-a88e-3ec75f81e00e",
        "object": "chat.completion",
        "created": 1705651092,
        "model": "deepseek-chat",
        "choices": choices
        if choices is not None
        else [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage or {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52},
        "system_fingerprint": "fp_3a5770e1b4_prod0820_fp8_kvcache",
    }


def error(kind, message_text="Authentication Fails, Your api key: ****abcd is invalid"):
    return {"error": {"message": message_text, "type": kind, "param": None, "code": kind}}


@pytest.fixture
def clock():
    return ManualClock(datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC))


@pytest.fixture
def deepseek(session, upstream, deepseek_key, clock):
    return OpenAICompatProvider(
        "deepseek", session, upstream.base_url, deepseek_key, json_mode="json_object", clock=clock
    )


@pytest.fixture
def vllm(session, upstream):
    return OpenAICompatProvider("vllm", session, f"{upstream.base_url}/v1", "token-abc123")


async def test_deepseek_json_object_answer_with_cache_usage(
    deepseek, upstream, deepseek_key
) -> None:
    upstream.reply(
        200,
        chat(
            orjson.dumps(ANSWER).decode(),
            usage={
                "prompt_tokens": 1200,
                "completion_tokens": 300,
                "total_tokens": 1500,
                "prompt_tokens_details": {"cached_tokens": 1024},
                "prompt_cache_hit_tokens": 1024,
                "prompt_cache_miss_tokens": 176,
            },
        ),
        headers={"x-request-id": "ds-req-77"},
    )
    done = await deepseek.complete(JSON_REQUEST, "deepseek-chat", timeout_s=5)
    assert done.data == ANSWER
    assert done.usage == Usage(input_tokens=176, cache_read_tokens=1024, output_tokens=300)
    assert done.finish_reason is FinishReason.STOP
    assert done.provider_request_id == "ds-req-77"
    assert done.provider == "deepseek"

    sent = upstream.requests[0]
    assert (sent.path, sent.query) == ("/chat/completions", "")
    assert sent.headers["Authorization"] == f"Bearer {deepseek_key}"
    assert deepseek_key not in sent.raw_url
    assert sent.body["response_format"] == {"type": "json_object"}
    assert sent.body["model"] == "deepseek-chat"
    assert sent.body["max_tokens"] == 300
    assert sent.body["temperature"] == 0.0
    assert sent.body["stream"] is False
    system, user = sent.body["messages"]
    assert user == {"role": "user", "content": "Invoice overdue."}
    assert system["role"] == "system"
    assert system["content"].startswith("Classify the email.\n\n")
    assert "JSON" in system["content"]
    assert orjson.dumps(SCHEMA, option=orjson.OPT_INDENT_2).decode() in system["content"]


async def test_json_schema_mode_sends_a_strict_response_format(vllm, upstream) -> None:
    upstream.reply(200, chat(orjson.dumps(ANSWER).decode()))
    done = await vllm.complete(JSON_REQUEST, "Qwen/Qwen2.5-7B-Instruct", timeout_s=5)
    assert done.data == ANSWER
    sent = upstream.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "classification", "schema": SCHEMA, "strict": True},
    }
    assert sent.body["messages"][0] == {"role": "system", "content": "Classify the email."}


async def test_text_request_has_no_response_format_and_no_empty_system(vllm, upstream) -> None:
    upstream.reply(200, chat("Hi!"))
    done = await vllm.complete(TEXT_REQUEST, "m", timeout_s=5)
    assert (done.text, done.data) == ("Hi!", None)
    assert "response_format" not in upstream.requests[0].body
    assert upstream.requests[0].body["messages"] == [{"role": "user", "content": "Say hi."}]


async def test_reasoning_tokens_stay_inside_output(deepseek, upstream) -> None:
    upstream.reply(
        200,
        chat(
            orjson.dumps(ANSWER).decode(),
            usage={
                "prompt_tokens": 50,
                "completion_tokens": 900,
                "total_tokens": 950,
                "prompt_cache_hit_tokens": 0,
                "prompt_cache_miss_tokens": 50,
                "completion_tokens_details": {"reasoning_tokens": 700},
            },
        ),
    )
    done = await deepseek.complete(JSON_REQUEST, "deepseek-reasoner", timeout_s=5)
    assert done.usage == Usage(input_tokens=50, output_tokens=900, reasoning_tokens=700)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (
            {
                "prompt_tokens": 2000,
                "completion_tokens": 10,
                "prompt_tokens_details": {"cached_tokens": 1536},
            },
            Usage(input_tokens=464, cache_read_tokens=1536, output_tokens=10),
        ),
        (
            {"prompt_tokens": 2000, "completion_tokens": 10},
            Usage(input_tokens=2000, output_tokens=10),
        ),
    ],
)
async def test_openai_style_cached_tokens_without_deepseek_fields(
    vllm, upstream, usage, expected
) -> None:
    upstream.reply(200, chat("ok", usage=usage))
    done = await vllm.complete(TEXT_REQUEST, "m", timeout_s=5)
    assert done.usage == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # tester B F7: the hit without the miss billed the uncached 289 tokens as 0
        ({"prompt_cache_hit_tokens": 200}, Usage(input_tokens=289, cache_read_tokens=200, output_tokens=26)),
        ({"prompt_cache_miss_tokens": 289}, Usage(input_tokens=289, cache_read_tokens=200, output_tokens=26)),
        ({"prompt_cache_hit_tokens": 200, "prompt_cache_miss_tokens": None},
         Usage(input_tokens=289, cache_read_tokens=200, output_tokens=26)),
        # hit + miss below prompt_tokens: the rest is uncached input, never free
        ({"prompt_cache_hit_tokens": 200, "prompt_cache_miss_tokens": 0},
         Usage(input_tokens=289, cache_read_tokens=200, output_tokens=26)),
        ({"prompt_cache_miss_tokens": 600}, Usage(input_tokens=600, output_tokens=26)),
    ],
)
async def test_a_missing_deepseek_cache_field_is_derived_from_prompt_tokens(
    vllm, upstream, fields, expected
) -> None:
    usage = {"prompt_tokens": 489, "completion_tokens": 26, "total_tokens": 515, **fields}
    upstream.reply(200, chat("ok", usage=usage))
    done = await vllm.complete(TEXT_REQUEST, "m", timeout_s=5)
    assert done.usage == expected


async def test_leading_blank_lines_under_load_are_tolerated(deepseek, upstream) -> None:
    upstream.reply(
        200, chat(orjson.dumps(ANSWER).decode()), lead=[b"\n", b"\n", b"  \n"], lead_interval_s=0.05
    )
    done = await deepseek.complete(JSON_REQUEST, "deepseek-chat", timeout_s=5)
    assert done.data == ANSWER
    assert done.provider_latency_ms >= 150.0
    assert done.provider_request_id == "930c60df-bf64-41c9-a88e-3ec75f81e00e"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("stop", FinishReason.STOP),
        ("tool_calls", FinishReason.TOOL_USE),
        ("function_call", FinishReason.TOOL_USE),
        ("eos_token_reached", FinishReason.UNKNOWN),
    ],
)
async def test_finish_reasons_map_without_loss(vllm, upstream, raw, expected) -> None:
    upstream.reply(200, chat("text", finish_reason=raw))
    done = await vllm.complete(TEXT_REQUEST, "m", timeout_s=5)
    assert done.finish_reason is expected
    assert done.raw_finish_reason == raw


async def test_content_filter_is_content_filtered(deepseek, upstream) -> None:
    upstream.reply(200, chat("", finish_reason="content_filter"))
    with pytest.raises(ContentFiltered) as info:
        await deepseek.complete(TEXT_REQUEST, "deepseek-chat", timeout_s=5)
    assert info.value.detail == "the answer was filtered (content_filter)"


async def test_insufficient_system_resource_is_overloaded(deepseek, upstream) -> None:
    upstream.reply(200, chat('{"label": ', finish_reason="insufficient_system_resource"))
    with pytest.raises(Overloaded) as info:
        await deepseek.complete(JSON_REQUEST, "deepseek-chat", timeout_s=5)
    assert info.value.retryable is True


@pytest.mark.parametrize(
    "body",
    [
        chat(None, choices=[]),
        chat(None),
        chat("   "),
        chat(None, finish_reason="tool_calls"),
    ],
)
async def test_empty_answers(deepseek, upstream, body) -> None:
    upstream.reply(200, body)
    with pytest.raises(EmptyAnswer):
        await deepseek.complete(JSON_REQUEST, "deepseek-chat", timeout_s=5)


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ('{"label": "billing", "reas', "the answer is not valid JSON"),
        ('["billing"]', "the answer is not a JSON object"),
        # only a leading think block and one fence around the whole answer are removed:
        # the text is never searched for JSON
        ('Here you go: {"label": "billing", "reason": "x"}', "the answer is not valid JSON"),
        ('{"label": "billing", "reason": "x"}\nHope that helps!', "the answer is not valid JSON"),
        ('<think>billing?', "the answer is not valid JSON"),  # the think block never closed
        ('Sure.\n```json\n{"label": "billing", "reason": "x"}\n```', "the answer is not valid JSON"),
        ('```python\n{"label": "billing", "reason": "x"}\n```', "the answer is not valid JSON"),
        ('```json\n{"label": "billing", "reason": "x"}\n```\n```json\n{"label": "billing", "reason": "y"}\n```',
         "the answer is not valid JSON"),
        ('```json {"label": "billing", "reason": "x"} ```', "the answer is not valid JSON"),
        ('I think </think>{"label": "billing", "reason": "x"}', "the answer is not valid JSON"),
    ],
)
async def test_content_that_is_not_a_json_object_is_malformed(
    deepseek, upstream, content, detail
) -> None:
    upstream.reply(200, chat(content))
    with pytest.raises(MalformedResponse) as info:
        await deepseek.complete(JSON_REQUEST, "deepseek-chat", timeout_s=5)
    assert info.value.detail == detail
    assert "billing" not in info.value.detail


@pytest.mark.parametrize(
    "content",
    [
        # Qwen3 on vLLM without --reasoning-parser (tester-wire F6, the README's local-vllm example)
        '<think>\nThe email mentions an invoice, so {"label": "spam"} is wrong.\n</think>\n\n'
        '{"label": "billing", "reason": "mentions an invoice"}',
        '```json\n{"label": "billing", "reason": "mentions an invoice"}\n```',
        '```\n{"label": "billing", "reason": "mentions an invoice"}\n```\n',
        '  <think></think>\n```JSON\r\n{"label": "billing", "reason": "mentions an invoice"}\r\n```  ',
    ],
)
@pytest.mark.parametrize("json_mode", ["json_object", "json_schema"])  # DeepSeek, vLLM
async def test_a_think_block_or_one_fence_around_the_answer_is_removed(
    session, upstream, json_mode, content
) -> None:
    provider = OpenAICompatProvider("local-vllm", session, f"{upstream.base_url}/v1", "token-abc123",
                                    json_mode=json_mode)
    upstream.reply(200, chat(content))
    done = await provider.complete(JSON_REQUEST, "qwen3-8b", timeout_s=5)
    assert done.data == ANSWER
    assert done.text == '{"label": "billing", "reason": "mentions an invoice"}'
    assert done.usage == Usage(input_tokens=40, output_tokens=12)


@pytest.mark.parametrize(
    "content",
    ['{"label": "billing", "reason": "mentions an invoice"}', '{"label": "billing", "rea', ""],
)
async def test_length_is_an_incomplete_answer_even_when_it_parses(deepseek, upstream, content) -> None:
    # tester-wire F2/F10: finish_reason "length" was returned as a success when the cut text parsed
    upstream.reply(200, chat(content, finish_reason="length"), headers={"x-request-id": "ds-cut"})
    with pytest.raises(IncompleteAnswer) as info:
        await deepseek.complete(JSON_REQUEST, "deepseek-chat", timeout_s=5)
    cut = info.value
    assert (cut.status, cut.code, cut.finish_reason) == (502, "provider_bad_response", FinishReason.LENGTH)
    assert cut.detail == "the answer stopped before it was complete (length)"
    assert cut.usage == Usage(input_tokens=40, output_tokens=12)
    assert cut.provider_request_id == "ds-cut"


@pytest.mark.parametrize(
    "body",
    [
        b"Service Unavailable",
        {
            "id": "x",
            "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
        },
        chat("hi", usage={"prompt_tokens": 10, "completion_tokens": -1}),
        chat(
            "hi",
            usage={
                "prompt_tokens": 10,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 11},
            },
        ),
    ],
)
async def test_undocumented_bodies_are_malformed(vllm, upstream, body) -> None:
    upstream.reply(200, body)
    with pytest.raises(MalformedResponse):
        await vllm.complete(TEXT_REQUEST, "m", timeout_s=5)


@pytest.mark.parametrize(
    ("status", "kind", "cls"),
    [
        (400, "invalid_request_error", InvalidRequest),
        (401, "authentication_error", AuthenticationFailed),
        (402, "insufficient_balance", BillingFailed),
        (403, "permission_denied", AuthenticationFailed),
        (404, "not_found", ModelUnavailable),  # issue 13: a retired or unknown model
        (422, "invalid_request_error", InvalidRequest),
        (500, "server_error", ServerError),
        (502, "bad_gateway", ServerError),
        (503, "server_overloaded", Overloaded),
        (504, "gateway_timeout", ServerError),
    ],
)
async def test_error_statuses_map_to_typed_errors(
    deepseek, upstream, deepseek_key, assert_safe_detail, status, kind, cls
) -> None:
    upstream.reply(
        status,
        error(kind, f"Your api key: {deepseek_key} is invalid"),
        headers={"x-request-id": "ds-err-1"},
    )
    with pytest.raises(ProviderError) as info:
        await deepseek.complete(TEXT_REQUEST, "deepseek-chat", timeout_s=5)
    assert type(info.value) is cls
    assert info.value.http_status == status
    assert info.value.detail == f"HTTP {status} {kind}"
    assert info.value.provider_request_id == "ds-err-1"
    assert info.value.retry_after is None
    assert_safe_detail(info.value, deepseek_key, "is invalid")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "20"}, 20.0),
        ({"Retry-After": "Sun, 01 Mar 2026 12:00:45 GMT"}, 45.0),
        ({"retry-after-ms": "250", "Retry-After": "1"}, 0.25),
        ({}, None),
    ],
)
async def test_429_is_rate_limited_with_the_advertised_wait(
    deepseek, upstream, headers, expected
) -> None:
    upstream.reply(429, error("rate_limit_reached", "Rate limit reached"), headers=headers)
    with pytest.raises(RateLimited) as info:
        await deepseek.complete(TEXT_REQUEST, "deepseek-chat", timeout_s=5)
    assert info.value.retry_after == expected
    assert info.value.detail == "HTTP 429 rate_limit_reached"


async def test_missing_key_fails_without_a_network_call(session, upstream) -> None:
    deepseek = OpenAICompatProvider(
        "deepseek", session, upstream.base_url, None, json_mode="json_object"
    )
    with pytest.raises(AuthenticationFailed, match="^DEEPSEEK_API_KEY is not set$"):
        await deepseek.complete(TEXT_REQUEST, "deepseek-chat", timeout_s=5)
    assert upstream.requests == []


async def test_blank_lines_forever_time_out(deepseek, upstream) -> None:
    upstream.reply(200, chat("late"), lead=[b"\n"] * 40, lead_interval_s=0.05)
    with pytest.raises(ProviderTimeout):
        await deepseek.complete(TEXT_REQUEST, "deepseek-chat", timeout_s=0.3)


def test_unknown_json_mode_is_a_config_error(session) -> None:
    with pytest.raises(ValueError, match="json_mode"):
        OpenAICompatProvider("x", session, "https://api.deepseek.com", "k", json_mode="grammar")  # type: ignore[arg-type]
