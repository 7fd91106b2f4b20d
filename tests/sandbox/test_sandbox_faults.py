"""Fault profiles: parsing, the deterministic decision sequences, and what each provider answers."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import aiohttp
import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors, types

from opsgate.sandbox import FaultProfile, FaultProfileError, SandboxServer, SandboxThread
from opsgate.sandbox.faults import FaultState, Outcome

ANTHROPIC_BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 50,
    "messages": [{"role": "user", "content": "hi"}],
}
DEEPSEEK_BODY = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


_HTTP = httpx.Client(timeout=10)


def _post(
    sandbox: SandboxThread | SandboxServer,
    provider: str,
    *,
    stream: bool = False,
    key: str = "k-test",
) -> httpx.Response:
    """One raw request in the provider's own shape (the gateway's code path is raw HTTP too)."""
    base = sandbox.base_urls[provider]
    if provider == "anthropic":
        return _HTTP.post(
            base + "/v1/messages",
            json={**ANTHROPIC_BODY, "stream": stream},
            headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        )
    if provider == "deepseek":
        return _HTTP.post(
            base + "/chat/completions",
            json={**DEEPSEEK_BODY, "stream": stream},
            headers={"Authorization": f"Bearer {key}"},
        )
    action = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return _HTTP.post(
        f"{base}/v1beta/models/gemini-2.5-flash:{action}",
        json=GEMINI_BODY,
        headers={"x-goog-api-key": key},
    )


# --- parsing ---------------------------------------------------------------------------------


def test_parse_combined_profile() -> None:
    profile = FaultProfile.parse(
        " outage:anthropic , slow:20ms,ratelimit:gemini,status:deepseek:402"
    )
    assert profile.outage == frozenset({"anthropic"})
    assert profile.ratelimit == frozenset({"gemini"})
    assert profile.status == {"deepseek": 402}
    assert profile.delay_s == pytest.approx(0.02)
    assert profile.text == "outage:anthropic,slow:20ms,ratelimit:gemini,status:deepseek:402"


@pytest.mark.parametrize(
    ("text", "delay"),
    [("slow", 0.3), ("slow:1.5s", 1.5), ("slow:50ms", 0.05), ("none", 0.0), ("", 0.0)],
)
def test_parse_latency(text: str, delay: float) -> None:
    assert FaultProfile.parse(text).delay_s == pytest.approx(delay)


@pytest.mark.parametrize(
    "text",
    ["outage:openai", "slow:fast", "flaky:2", "status:gemini:200", "status:gemini", "meltdown",
     "count:gemini:slow", "count:deepseek2:500"],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(FaultProfileError):
        FaultProfile.parse(text)


# --- decisions -------------------------------------------------------------------------------


def test_flaky_sequence_is_fixed_and_never_fails_twice_in_a_row() -> None:
    state = FaultState("flaky")
    outcomes = [state.decide("gemini").outcome for _ in range(9)]
    ok, rl, ov = Outcome.OK, Outcome.RATE_LIMITED, Outcome.OVERLOADED
    assert outcomes == [ok, rl, ok, ok, ov, ok, ok, rl, ok]
    longer = [state.decide("gemini").outcome is not ok for _ in range(60)]
    assert not any(a and b for a, b in itertools.pairwise(longer))
    assert sum(longer) == 20


def test_counters_are_per_provider_and_reset_on_set() -> None:
    state = FaultState("flaky")
    assert [state.decide("anthropic").outcome for _ in range(2)] == [
        Outcome.OK,
        Outcome.RATE_LIMITED,
    ]
    assert state.decide("deepseek").outcome is Outcome.OK
    state.set("flaky")
    assert [state.decide("anthropic").outcome for _ in range(2)] == [
        Outcome.OK,
        Outcome.RATE_LIMITED,
    ]


def test_precedence() -> None:
    state = FaultState("malformed,safety-blocked,ratelimit:deepseek,timeout")
    assert state.decide("deepseek").outcome is Outcome.HANG
    state.set("malformed,safety-blocked,ratelimit:deepseek")
    assert state.decide("deepseek").outcome is Outcome.RATE_LIMITED
    assert state.decide("gemini").outcome is Outcome.MALFORMED


def test_count_decisions_take_the_count_part_and_advance_no_counter() -> None:
    state = FaultState("count:anthropic:timeout,count:gemini:503,flaky,slow:10ms")
    assert state.decide_count("anthropic").outcome is Outcome.HANG
    gemini = state.decide_count("gemini")
    assert (gemini.outcome, gemini.status, gemini.delay_s) == (Outcome.STATUS, 503, 0.01)
    assert [state.decide_count("deepseek").outcome for _ in range(3)] == [Outcome.OK] * 3
    assert [state.decide("deepseek").outcome for _ in range(2)] == [Outcome.OK, Outcome.RATE_LIMITED]
    state.set("status:gemini:500")
    assert state.decide_count("gemini").status == 500


def test_per_provider_malformed_timeout_once_and_off_schema_sequences() -> None:
    state = FaultState("malformed:anthropic,timeout-once:gemini,off-schema")
    assert [state.decide("anthropic").outcome for _ in range(2)] == [Outcome.MALFORMED] * 2
    assert [state.decide("gemini").outcome for _ in range(3)] == [
        Outcome.HANG, Outcome.OFF_SCHEMA, Outcome.OK]
    assert [state.decide("deepseek").outcome for _ in range(4)] == [
        Outcome.OFF_SCHEMA, Outcome.OK, Outcome.OFF_SCHEMA, Outcome.OK]
    with pytest.raises(FaultProfileError):
        FaultProfile.parse("timeout-once:openai")


def test_an_off_schema_answer_is_a_well_formed_empty_object(sandbox: SandboxThread) -> None:
    sandbox.set_faults("off-schema")
    url = sandbox.base_urls["deepseek"]
    body = {**DEEPSEEK_BODY, "response_format": {"type": "json_schema", "json_schema": {
        "name": "r", "schema": {"type": "object", "properties": {"a": {"type": "integer"}},
                                "required": ["a"]}}}}
    first, second = (_HTTP.post(f"{url}/chat/completions", json=body,
                                headers={"Authorization": "Bearer sk-test"}).json() for _ in range(2))
    assert json.loads(first["choices"][0]["message"]["content"]) == {}
    assert first["usage"]["completion_tokens"] > 0
    assert set(json.loads(second["choices"][0]["message"]["content"])) == {"a"}  # schema-valid again


# --- behaviour over HTTP ---------------------------------------------------------------------


def test_flaky_statuses_per_provider(sandbox: SandboxThread) -> None:
    sandbox.set_faults("flaky")
    seen = {
        p: [_post(sandbox, p).status_code for _ in range(6)]
        for p in ("anthropic", "deepseek", "gemini")
    }
    assert seen == {
        "anthropic": [200, 429, 200, 200, 529, 200],
        "deepseek": [200, 429, 200, 200, 503, 200],
        "gemini": [200, 429, 200, 200, 503, 200],
    }
    stats = sandbox.stats()
    assert stats["faults"] == "flaky"
    assert stats["providers"]["anthropic"] == {
        "requests": 6,
        "statuses": {"200": 4, "429": 1, "529": 1},
        "cancelled": 0,
    }


def test_flaky_retry_hints(sandbox: SandboxThread) -> None:
    sandbox.set_faults("flaky")
    replies = {
        p: [_post(sandbox, p) for _ in range(2)][1] for p in ("anthropic", "deepseek", "gemini")
    }
    assert replies["anthropic"].headers["retry-after"] == "1"
    assert replies["deepseek"].headers["retry-after"] == "1"
    assert "retry-after" not in replies["gemini"].headers
    assert replies["gemini"].json()["error"]["details"][-1]["retryDelay"] == "2s"


def test_flaky_through_sdks_single_retry_succeeds(sandbox: SandboxThread) -> None:
    sandbox.set_faults("flaky")
    sdk = openai.OpenAI(api_key="sk-test", base_url=sandbox.base_urls["deepseek"], max_retries=0)
    sdk.chat.completions.create(**DEEPSEEK_BODY)
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(**DEEPSEEK_BODY)
    assert sdk.chat.completions.create(**DEEPSEEK_BODY).choices[0].finish_reason == "stop"


def test_outage_of_one_provider_with_latency(sandbox: SandboxThread) -> None:
    sandbox.set_faults("outage:anthropic,slow:20ms")
    started = time.perf_counter()
    assert _post(sandbox, "deepseek").status_code == 200
    assert time.perf_counter() - started >= 0.02
    outage = _post(sandbox, "anthropic")
    assert outage.status_code == 529
    assert outage.json()["error"]["type"] == "overloaded_error"
    assert _post(sandbox, "gemini").status_code == 200


def test_outage_through_anthropic_sdk(sandbox: SandboxThread) -> None:
    sandbox.set_faults("outage:anthropic")
    sdk = anthropic.Anthropic(
        api_key="sk-ant-test", base_url=sandbox.base_urls["anthropic"], max_retries=0
    )
    for _ in range(3):
        with pytest.raises(anthropic.InternalServerError):
            sdk.messages.create(**ANTHROPIC_BODY)
    assert sandbox.stats()["providers"]["anthropic"]["statuses"] == {"529": 3}


def test_outage_through_gemini_sdk(sandbox: SandboxThread) -> None:
    sandbox.set_faults("outage:gemini")
    sdk = genai.Client(
        api_key="AIza-test",
        http_options=types.HttpOptions(
            base_url=sandbox.base_urls["gemini"], retry_options=types.HttpRetryOptions(attempts=1)
        ),
    )
    with pytest.raises(errors.ServerError) as caught:
        sdk.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert caught.value.code == 503


def test_slow_default_latency(sandbox: SandboxThread) -> None:
    sandbox.set_faults("slow")
    started = time.perf_counter()
    assert _post(sandbox, "gemini").status_code == 200
    assert 0.3 <= time.perf_counter() - started < 3


@pytest.mark.parametrize("provider", ["anthropic", "deepseek", "gemini"])
def test_malformed_variants_cycle(sandbox: SandboxThread, provider: str) -> None:
    sandbox.set_faults("malformed")
    replies = [_post(sandbox, provider) for _ in range(4)]
    assert [r.status_code for r in replies] == [200] * 4
    with pytest.raises(json.JSONDecodeError):
        json.loads(replies[0].text)
    missing = {"anthropic": "content", "deepseek": "choices", "gemini": "candidates"}[provider]
    assert missing not in replies[1].json()
    assert replies[2].content == b""
    with pytest.raises(json.JSONDecodeError):
        json.loads(replies[3].text)


@pytest.mark.parametrize(
    ("provider", "terminal"),
    [("anthropic", "message_stop"), ("deepseek", "[DONE]"), ("gemini", "finishReason")],
)
def test_malformed_streams(sandbox: SandboxThread, provider: str, terminal: str) -> None:
    sandbox.set_faults("malformed")
    broken, cut, empty = (_post(sandbox, provider, stream=True) for _ in range(3))
    data = [line[6:] for line in broken.text.splitlines() if line.startswith("data: ")]
    with pytest.raises(json.JSONDecodeError):
        json.loads(data[-1])
    assert cut.text.count("data: ") == 1 and terminal not in cut.text
    assert empty.text == ""


def test_malformed_json_breaks_the_sdk(sandbox: SandboxThread) -> None:
    sandbox.set_faults("malformed")
    sdk = anthropic.Anthropic(
        api_key="sk-ant-test", base_url=sandbox.base_urls["anthropic"], max_retries=0
    )
    with pytest.raises(json.JSONDecodeError):
        sdk.messages.create(**ANTHROPIC_BODY)


@pytest.mark.parametrize("provider", ["anthropic", "deepseek", "gemini"])
def test_safety_blocked_streams(sandbox: SandboxThread, provider: str) -> None:
    sandbox.set_faults("safety-blocked")
    text = _post(sandbox, provider, stream=True).text
    marker = {
        "anthropic": '"stop_reason":"refusal"',
        "deepseek": '"finish_reason":"content_filter"',
        "gemini": '"blockReason":"SAFETY"',
    }[provider]
    assert marker in text
    assert "tool_use" not in text and '"candidates"' not in text


def test_control_endpoints(sandbox: SandboxThread) -> None:
    origin = sandbox.base_urls["anthropic"].removesuffix("/anthropic")
    changed = httpx.post(origin + "/_sandbox/faults", json={"profile": "ratelimit:deepseek"})
    assert changed.json() == {"profile": "ratelimit:deepseek"}
    assert httpx.get(origin + "/_sandbox/faults").json() == {"profile": "ratelimit:deepseek"}
    assert _post(sandbox, "deepseek").status_code == 429
    rejected = httpx.post(origin + "/_sandbox/faults", json={"profile": "outage:nowhere"})
    assert rejected.status_code == 400 and "nowhere" in rejected.json()["error"]
    assert httpx.post(origin + "/_sandbox/faults", json={}).status_code == 400
    stats = httpx.get(origin + "/_sandbox/stats").json()
    assert stats["providers"]["deepseek"]["statuses"] == {"429": 1}
    assert stats["providers"]["gemini"] == {"requests": 0, "statuses": {}, "cancelled": 0}
    cleared = httpx.delete(origin + "/_sandbox/stats").json()
    assert cleared["providers"]["deepseek"]["requests"] == 0


# --- timeout ---------------------------------------------------------------------------------


async def _wait_for(predicate: object, limit_s: float = 3.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate() and time.monotonic() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.02)


async def test_timeout_hangs_past_client_timeout_and_is_cancelled() -> None:
    async with SandboxServer("timeout") as server:
        url = server.base_urls["deepseek"] + "/chat/completions"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
            with pytest.raises(asyncio.TimeoutError):
                await session.post(url, json=DEEPSEEK_BODY, headers={"Authorization": "Bearer k"})
        await _wait_for(lambda: server.stats()["providers"]["deepseek"]["cancelled"] == 1)
        assert server.stats()["providers"]["deepseek"] == {
            "requests": 1,
            "statuses": {},
            "cancelled": 1,
        }


async def test_cancelling_the_caller_cancels_the_handler() -> None:
    async with SandboxServer("timeout") as server, aiohttp.ClientSession() as session:
        url = server.base_urls["gemini"] + "/v1beta/models/m:generateContent"
        call = asyncio.create_task(
            session.post(url, json=GEMINI_BODY, headers={"x-goog-api-key": "k"})
        )
        await _wait_for(lambda: server.stats()["providers"]["gemini"]["requests"] == 1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await _wait_for(lambda: server.stats()["providers"]["gemini"]["cancelled"] == 1)
        assert server.stats()["providers"]["gemini"]["cancelled"] == 1


async def test_stop_does_not_wait_for_hung_requests() -> None:
    server = SandboxServer("timeout")
    await server.start()
    hung = httpx.Client(timeout=10)
    request = asyncio.create_task(asyncio.to_thread(_post_with, hung, server))
    await _wait_for(lambda: server.stats()["providers"]["anthropic"]["requests"] == 1)
    started = time.perf_counter()
    await server.stop()
    assert time.perf_counter() - started < 3
    with pytest.raises(httpx.HTTPError):
        await request
    hung.close()


def _post_with(client: httpx.Client, server: SandboxServer) -> httpx.Response:
    return client.post(
        server.base_urls["anthropic"] + "/v1/messages",
        json=ANTHROPIC_BODY,
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
    )
