"""Gemini generateContent adapter against a loopback server with documented response bodies."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from tests.routing.routing_fakes import RecordingSleep, ScriptedProvider

from opsgate.clock import ManualClock
from opsgate.providers.base import CompletionRequest, FinishReason, Usage
from opsgate.providers.errors import (
    AuthenticationFailed,
    ContentFiltered,
    EmptyAnswer,
    IncompleteAnswer,
    InvalidRequest,
    ModelUnavailable,
    MalformedResponse,
    Overloaded,
    ProviderError,
    RateLimited,
    Scope,
    ServerError,
    SpendCapReached,
)
from opsgate.providers.gemini import GeminiProvider, daily_quota_reset_s, generate_content_payload
from opsgate.routing.policy import RoutePolicy, Target
from opsgate.routing.router import Router

SCHEMA = {
    "$defs": {
        "Step": {
            "type": "object",
            "title": "Step",
            "properties": {"title": {"type": "string", "title": "Title"}},
            "required": ["title"],
        }
    },
    "type": "object",
    "title": "Breakdown",
    "properties": {
        "steps": {"type": "array", "items": {"$ref": "#/$defs/Step"}, "maxItems": 5},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
    },
    "required": ["steps"],
    "additionalProperties": False,
}
JSON_REQUEST = CompletionRequest(
    system="Break the task down.",
    user="Ship the release.",
    max_tokens=512,
    json_schema=SCHEMA,
    schema_name="breakdown",
    temperature=0.3,
)
TEXT_REQUEST = CompletionRequest(system="", user="Say hi.", max_tokens=16)
ANSWER = {"steps": [{"title": "Tag"}, {"title": "Publish"}], "note": None}
MODEL = "gemini-2.0-flash"


def generated(parts=None, finish="STOP", usage=None, *, content=True):
    candidate = {"finishReason": finish, "index": 0, "avgLogprobs": -0.0523}
    if content:
        candidate["content"] = {"parts": parts or [{"text": "ok"}], "role": "model"}
    return {
        "candidates": [candidate],
        "usageMetadata": usage
        or {"promptTokenCount": 8, "candidatesTokenCount": 2, "totalTokenCount": 10},
        "modelVersion": MODEL,
        "responseId": "2K9NaJ-ODfKxz7IP0fX3wQk",
    }


def google_error(
    code, status, message="Request had invalid authentication credentials.", details=None
):
    error = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return {"error": error}


@pytest.fixture
def gemini(session, upstream, gemini_key):
    return GeminiProvider(session, gemini_key, base_url=upstream.base_url)


async def test_json_answer_with_cached_thought_and_tool_prompt_tokens(
    gemini, upstream, gemini_key
) -> None:
    upstream.reply(
        200,
        generated(
            [
                {"text": "Planning the steps...", "thought": True},
                {"text": orjson.dumps(ANSWER).decode()},
            ],
            usage={
                "promptTokenCount": 1500,
                "cachedContentTokenCount": 1000,
                "candidatesTokenCount": 120,
                "thoughtsTokenCount": 80,
                "toolUsePromptTokenCount": 20,
                "totalTokenCount": 1720,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1500}],
            },
        ),
    )
    done = await gemini.complete(JSON_REQUEST, MODEL, timeout_s=5)
    assert done.data == ANSWER
    assert done.text == orjson.dumps(ANSWER).decode()
    assert done.usage == Usage(
        input_tokens=520, cache_read_tokens=1000, output_tokens=200, reasoning_tokens=80
    )
    assert done.usage.total_tokens == 1720
    assert done.finish_reason is FinishReason.STOP
    assert done.provider_request_id == "2K9NaJ-ODfKxz7IP0fX3wQk"

    sent = upstream.requests[0]
    assert sent.path == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert sent.query == ""
    assert sent.headers["x-goog-api-key"] == gemini_key
    assert gemini_key not in sent.raw_url
    assert "key=" not in sent.raw_url
    assert sent.body["systemInstruction"] == {"parts": [{"text": "Break the task down."}]}
    assert sent.body["contents"] == [{"role": "user", "parts": [{"text": "Ship the release."}]}]
    assert sent.body["generationConfig"] == {
        "maxOutputTokens": 512,
        "temperature": 0.3,
        "responseMimeType": "application/json",
        "responseSchema": {
            "type": "OBJECT",
            "properties": {
                "steps": {
                    "type": "ARRAY",
                    "items": {
                        "type": "OBJECT",
                        "properties": {"title": {"type": "STRING"}},
                        "required": ["title"],
                    },
                    "maxItems": 5,
                },
                "note": {"type": "STRING", "nullable": True},
            },
            "required": ["steps"],
            "propertyOrdering": ["steps", "note"],
        },
    }


async def test_text_request_without_system_or_schema(gemini, upstream) -> None:
    upstream.reply(
        200,
        generated([{"text": "Hi"}, {"text": "!"}], finish="STOP"),
        headers={"x-goog-request-id": "goog-1"},
    )
    done = await gemini.complete(TEXT_REQUEST, "models/gemini-2.0-flash", timeout_s=5)
    assert (done.text, done.data) == ("Hi!", None)
    assert done.finish_reason is FinishReason.STOP
    assert done.provider_request_id == "goog-1"
    assert done.usage == Usage(input_tokens=8, output_tokens=2)
    body = upstream.requests[0].body
    assert "systemInstruction" not in body
    assert body["generationConfig"] == {"maxOutputTokens": 16, "temperature": 0.2}
    assert upstream.requests[0].path == "/v1beta/models/gemini-2.0-flash:generateContent"


@pytest.mark.parametrize(
    ("request_", "parts"),
    [
        (JSON_REQUEST, [{"text": '{"steps": [{"title": "Ta'}]),  # cut: not JSON
        (JSON_REQUEST, [{"text": '{"steps": [{"title": "Tag"}]}'}]),  # cut, but still parses
        (TEXT_REQUEST, [{"text": "Hi"}, {"text": "!"}]),
        (TEXT_REQUEST, [{"text": "pondering", "thought": True}]),  # thoughts used up the limit
    ],
)
async def test_max_tokens_is_an_incomplete_answer(gemini, upstream, request_, parts) -> None:
    upstream.reply(200, generated(parts, finish="MAX_TOKENS"), headers={"x-goog-request-id": "goog-cut"})
    with pytest.raises(IncompleteAnswer) as info:
        await gemini.complete(request_, MODEL, timeout_s=5)
    cut = info.value
    assert (cut.status, cut.code, cut.finish_reason) == (502, "provider_bad_response", FinishReason.LENGTH)
    assert cut.detail == "the answer stopped before it was complete (MAX_TOKENS)"
    assert cut.usage == Usage(input_tokens=8, output_tokens=2)
    assert cut.provider_request_id == "goog-cut"


@pytest.mark.parametrize(
    "raw", ["MALFORMED_FUNCTION_CALL", "LANGUAGE", "OTHER", "UNEXPECTED_TOOL_CALL"]
)
async def test_other_finish_reasons_stay_unknown(gemini, upstream, raw) -> None:
    upstream.reply(200, generated([{"text": "partial"}], finish=raw))
    done = await gemini.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert done.finish_reason is FinishReason.UNKNOWN
    assert done.raw_finish_reason == raw


async def test_blocked_prompt_is_content_filtered(gemini, upstream) -> None:
    upstream.reply(
        200,
        {
            "promptFeedback": {
                "blockReason": "SAFETY",
                "safetyRatings": [
                    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}
                ],
            },
            "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
            "modelVersion": MODEL,
        },
    )
    with pytest.raises(ContentFiltered) as info:
        await gemini.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert info.value.detail == "the prompt was blocked (SAFETY)"


@pytest.mark.parametrize(
    "finish", ["SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"]
)
async def test_blocked_answers_are_content_filtered(gemini, upstream, finish) -> None:
    upstream.reply(200, generated(finish=finish, content=False))
    with pytest.raises(ContentFiltered) as info:
        await gemini.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert info.value.detail == f"the answer was blocked ({finish})"


async def test_safety_finish_with_partial_content_is_still_filtered(gemini, upstream) -> None:
    upstream.reply(200, generated([{"text": "Here is how to"}], finish="SAFETY"))
    with pytest.raises(ContentFiltered):
        await gemini.complete(TEXT_REQUEST, MODEL, timeout_s=5)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        # no promptTokenCount: the prompt is what totalTokenCount counts beyond the other parts
        ({"candidatesTokenCount": 120, "thoughtsTokenCount": 80, "totalTokenCount": 1700},
         Usage(input_tokens=1500, output_tokens=200, reasoning_tokens=80)),
        ({"cachedContentTokenCount": 1000, "candidatesTokenCount": 120, "totalTokenCount": 1620},
         Usage(input_tokens=500, cache_read_tokens=1000, output_tokens=120)),
        # no thoughtsTokenCount although the total counts thoughts: billed as output
        ({"promptTokenCount": 1500, "candidatesTokenCount": 120, "totalTokenCount": 1700},
         Usage(input_tokens=1500, output_tokens=200)),
    ],
)
async def test_a_missing_count_is_derived_from_the_total(gemini, upstream, usage, expected) -> None:
    upstream.reply(200, generated([{"text": "hi"}], usage=usage))
    done = await gemini.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert done.usage == expected


@pytest.mark.parametrize(
    "body",
    [
        generated(finish="OTHER", content=False),
        generated([{"text": "thinking only", "thought": True}]),
        {"candidates": [], "usageMetadata": {"promptTokenCount": 3}},
        {"usageMetadata": {"promptTokenCount": 3}},
    ],
)
async def test_empty_answers(gemini, upstream, body) -> None:
    upstream.reply(200, body)
    with pytest.raises(EmptyAnswer):
        await gemini.complete(TEXT_REQUEST, MODEL, timeout_s=5)


@pytest.mark.parametrize(
    ("body", "request_"),
    [
        (b"\n<html>oops</html>", TEXT_REQUEST),
        (
            {"candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}]},
            TEXT_REQUEST,
        ),
        (
            generated(
                [{"text": "hi"}], usage={"promptTokenCount": 5, "cachedContentTokenCount": 9}
            ),
            TEXT_REQUEST,
        ),
        ({"candidates": ["text"], "usageMetadata": {}}, TEXT_REQUEST),
        (generated([{"text": "hi"}], usage={"candidatesTokenCount": 2}), TEXT_REQUEST),  # no prompt count
    ],
)
async def test_undocumented_or_cut_bodies_are_malformed(gemini, upstream, body, request_) -> None:
    upstream.reply(200, body)
    with pytest.raises(MalformedResponse):
        await gemini.complete(request_, MODEL, timeout_s=5)


@pytest.mark.parametrize(
    ("status", "google_status", "cls"),
    [
        (400, "INVALID_ARGUMENT", InvalidRequest),
        (401, "UNAUTHENTICATED", AuthenticationFailed),
        (403, "PERMISSION_DENIED", AuthenticationFailed),
        (404, "NOT_FOUND", ModelUnavailable),  # issue 13: a retired model
        (500, "INTERNAL", ServerError),
        (503, "UNAVAILABLE", Overloaded),
        (504, "DEADLINE_EXCEEDED", ServerError),
    ],
)
async def test_error_statuses_map_to_typed_errors(
    gemini, upstream, gemini_key, assert_safe_detail, status, google_status, cls
) -> None:
    upstream.reply(status, google_error(status, google_status, f"API key not valid: {gemini_key}"))
    with pytest.raises(ProviderError) as info:
        await gemini.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert type(info.value) is cls
    assert info.value.http_status == status
    assert info.value.detail == f"HTTP {status} {google_status}"
    assert_safe_detail(info.value, gemini_key, "API key not valid")


async def test_429_reads_retry_info_from_the_body(gemini, upstream) -> None:
    upstream.reply(
        429,
        google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota.",
            [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        }
                    ],
                },
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [
                        {
                            "description": "Learn more",
                            "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                        }
                    ],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "32s"},
            ],
        ),
    )
    with pytest.raises(RateLimited) as info:
        await gemini.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert info.value.retry_after == 32.0
    assert info.value.detail == "HTTP 429 RESOURCE_EXHAUSTED"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("You exceeded your current quota. Please retry in 32.5s.", 32.5),
        ("Quota exceeded. Please retry in 750ms.", 0.75),
        ("Resource has been exhausted (e.g. check quota).", None),
    ],
)
async def test_429_falls_back_to_the_retry_phrase(gemini, upstream, message, expected) -> None:
    upstream.reply(429, google_error(429, "RESOURCE_EXHAUSTED", message))
    with pytest.raises(RateLimited) as info:
        await gemini.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert info.value.retry_after == expected


# A per-day quota clears only at midnight Pacific time (Gemini API "Rate limits"): it is a quota
# cap (spend_cap: asked once, the chain falls back, the breaker cools down), not a rate limit
# to retry, whether or not the answer carries a RetryInfo.

def quota_failure(*quota_ids: str) -> dict:
    return {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                            "quotaId": quota_id, "quotaDimensions": {"location": "global", "model": MODEL}}
                           for quota_id in quota_ids]}


PER_DAY = quota_failure("GenerateRequestsPerDayPerProjectPerModel-FreeTier")
PER_MINUTE = quota_failure("GenerateRequestsPerMinutePerProjectPerModel-FreeTier")
QUOTA_MESSAGE = "You exceeded your current quota, please check your plan and billing details."
SAT_2AM_PST = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "details",
    [
        [PER_DAY],
        [quota_failure("GenerateContentInputTokensPerModelPerMinute-FreeTier",
                       "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                       "GenerateRequestsPerDayPerProjectPerModel-FreeTier"),
         {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "20s"}],
    ],
    ids=["without-retry-info", "with-a-short-retry-info"],
)
async def test_a_per_day_quota_is_a_quota_cap_until_midnight_pacific(session, upstream, gemini_key, details) -> None:
    gemini = GeminiProvider(session, gemini_key, base_url=upstream.base_url, clock=ManualClock(SAT_2AM_PST))
    upstream.reply(429, google_error(429, "RESOURCE_EXHAUSTED", QUOTA_MESSAGE, details))
    with pytest.raises(SpendCapReached) as info:
        await gemini.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert (info.value.kind, info.value.retryable, info.value.fallback) == ("spend_cap", False, True)
    assert info.value.retry_after == 22 * 3600.0  # 02:00 PST to midnight
    assert info.value.detail == "HTTP 429 RESOURCE_EXHAUSTED: the provider account's usage limit is reached"
    assert info.value.scope is Scope.MODEL  # ...PerModel: the project's other models still serve


async def test_a_per_day_quota_naming_no_model_holds_back_the_whole_provider(session, upstream, gemini_key) -> None:
    gemini = GeminiProvider(session, gemini_key, base_url=upstream.base_url, clock=ManualClock(SAT_2AM_PST))
    upstream.reply(429, google_error(429, "RESOURCE_EXHAUSTED", QUOTA_MESSAGE,
                                     [quota_failure("GenerateRequestsPerDayPerProject")]))
    with pytest.raises(SpendCapReached) as info:
        await gemini.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert info.value.scope is Scope.PROVIDER


async def test_a_per_minute_quota_without_retry_info_stays_a_rate_limit_retried_with_backoff(gemini, upstream) -> None:
    upstream.reply(429, google_error(429, "RESOURCE_EXHAUSTED", QUOTA_MESSAGE, [PER_MINUTE]))
    with pytest.raises(RateLimited) as info:
        await gemini.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert (info.value.retryable, info.value.retry_after) == (True, None)


@pytest.mark.parametrize(
    ("now", "expected_s"),
    [
        (datetime(2026, 3, 8, 7, 30, tzinfo=UTC), 1800.0),  # 23:30 PST, the night summer time starts
        (datetime(2026, 3, 8, 9, 0, tzinfo=UTC), 22 * 3600.0),  # 01:00 PST; midnight PDT is 07:00 UTC
        (datetime(2026, 11, 1, 7, 0, tzinfo=UTC), 25 * 3600.0),  # midnight PDT: the day summer time ends
        (datetime(2026, 12, 5, 8, 0, tzinfo=UTC), 24 * 3600.0),  # midnight PST exactly: the next one
    ],
)
def test_the_daily_reset_is_midnight_pacific_across_summer_time(now: datetime, expected_s: float) -> None:
    assert daily_quota_reset_s(now) == expected_s


async def test_a_per_day_quota_falls_back_at_once_and_cools_the_breaker_down(session, upstream, gemini_key) -> None:
    """Read as a rate limit, the per-day 429 was retried twice with backoff on every call before
    the fallback answered, and never cooled down."""
    clock = ManualClock(SAT_2AM_PST)
    gemini = GeminiProvider(session, gemini_key, base_url=upstream.base_url, clock=clock)
    for _ in range(3):
        upstream.reply(429, google_error(429, "RESOURCE_EXHAUSTED", QUOTA_MESSAGE, [PER_DAY]))
    sleep = RecordingSleep(clock)
    router = Router({"gemini": gemini, "deepseek": ScriptedProvider("deepseek", clock)}, clock, sleep,
                    failure_threshold=5, cooldown_s=30.0, max_cooldown_s=300.0)
    policy = RoutePolicy(chain=(Target("gemini", MODEL), Target("deepseek", "deepseek-flash")),
                         timeout_s=10.0, max_attempts_per_target=3, max_retry_wait_s=30.0)

    first = await router.complete(TEXT_REQUEST, policy)
    clock.advance(299.0)
    second = await router.complete(TEXT_REQUEST, policy)

    assert [(a.provider, a.outcome_kind) for a in first.attempts] == [("gemini", "spend_cap"), ("deepseek", "ok")]
    assert [(a.provider, a.outcome_kind) for a in second.attempts] == [("gemini", "circuit_open"), ("deepseek", "ok")]
    assert (len(upstream.requests), sleep.waits) == (1, [])


async def test_path_injection_in_the_model_name_is_refused_locally(gemini, upstream) -> None:
    with pytest.raises(InvalidRequest):
        await gemini.complete(TEXT_REQUEST, "../../v1/files?x=", timeout_s=5)
    assert upstream.requests == []


async def test_missing_key_fails_without_a_network_call(session, upstream) -> None:
    gemini = GeminiProvider(session, None, base_url=upstream.base_url)
    with pytest.raises(AuthenticationFailed, match="^GEMINI_API_KEY is not set$"):
        await gemini.complete(TEXT_REQUEST, MODEL, timeout_s=5)
    assert upstream.requests == []


async def test_count_tokens_sends_the_whole_generate_content_request(gemini, upstream, gemini_key) -> None:
    upstream.reply(200, {"totalTokens": 31, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 31}]})
    counted = await gemini.count_tokens(JSON_REQUEST, MODEL, 5)
    assert counted.tokens == 31
    [sent] = upstream.requests
    assert sent.path == f"/v1beta/models/{MODEL}:countTokens" and sent.query == ""
    assert sent.headers["x-goog-api-key"] == gemini_key
    assert sent.body == {"generateContentRequest": {"model": f"models/{MODEL}",
                                                    **generate_content_payload(JSON_REQUEST, MODEL)}}
    assert sent.body["generateContentRequest"]["systemInstruction"] == {"parts": [{"text": "Break the task down."}]}


async def test_count_tokens_failures_are_typed(gemini, upstream) -> None:
    upstream.reply(503, google_error(503, "UNAVAILABLE", "The model is overloaded."))
    with pytest.raises(Overloaded):
        await gemini.count_tokens(JSON_REQUEST, MODEL, 5)
    upstream.reply(200, {"cachedContentTokenCount": 0})
    with pytest.raises(MalformedResponse):
        await gemini.count_tokens(JSON_REQUEST, MODEL, 5)
