"""The Anthropic sandbox, driven by the official ``anthropic`` SDK (retries off)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import anthropic
import httpx
import jsonschema
import pytest
from pydantic import BaseModel, Field

from opsgate.sandbox import SandboxThread
from opsgate.sandbox.synth import count_tokens

MODEL = "claude-sonnet-4-6"


class Triage(BaseModel):
    label: str = Field(min_length=3)
    urgency: int = Field(ge=1, le=5)
    reasons: list[str] = Field(min_length=2)


@pytest.fixture
def client(sandbox: SandboxThread, anthropic_key: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        api_key=anthropic_key, base_url=sandbox.base_urls["anthropic"], max_retries=0
    ) as sdk:
        yield sdk


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_text_message_parses_with_usage(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=MODEL, max_tokens=200, system="Be brief.", messages=_user("Summarise my inbox")
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    text = message.content[0].text
    assert "Summarise my inbox" in text
    assert message.usage.input_tokens == count_tokens("Be brief.\nSummarise my inbox")
    assert message.usage.output_tokens == count_tokens(text)
    assert message.usage.cache_creation_input_tokens == 0
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation is not None
    assert message.usage.cache_creation.ephemeral_5m_input_tokens == 0


def test_forced_tool_answers_schema_valid_tool_use(client: anthropic.Anthropic) -> None:
    schema = Triage.model_json_schema()
    message = client.messages.create(
        model=MODEL,
        max_tokens=500,
        messages=_user("Triage this email"),
        tools=[{"name": "triage", "description": "Record the triage", "input_schema": schema}],
        tool_choice={"type": "tool", "name": "triage"},
    )
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use" and block.name == "triage" and block.id.startswith("toolu_")
    jsonschema.validate(block.input, schema)
    Triage.model_validate(block.input)


def test_unanswerable_input_schema_is_a_bad_request(client: anthropic.Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 5, "maximum": 1}},
        "required": ["n"],
    }
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model=MODEL,
            max_tokens=50,
            messages=_user("x"),
            tools=[{"name": "t", "description": "d", "input_schema": schema}],
            tool_choice={"type": "tool", "name": "t"},
        )
    assert caught.value.body["error"]["message"].startswith("input_schema:")


def test_max_tokens_cuts_text(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=3, messages=_user("hello"))
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3
    assert len(message.content[0].text.encode()) == 12


def test_cache_write_then_read(client: anthropic.Anthropic) -> None:
    system_text = "Policy " + secrets.token_hex(8) + " " + "x" * 5000
    system_tokens = count_tokens(system_text)
    system = [
        {"type": "text", "text": system_text, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    first = client.messages.create(model=MODEL, max_tokens=50, system=system, messages=_user("one"))
    second = client.messages.create(
        model=MODEL, max_tokens=50, system=system, messages=_user("one")
    )
    assert first.usage.cache_creation_input_tokens == system_tokens
    assert first.usage.cache_creation.ephemeral_1h_input_tokens == system_tokens
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == 0
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == system_tokens
    assert second.usage.cache_creation_input_tokens == 0
    total = count_tokens(system_text + "\none")
    assert first.usage.input_tokens == second.usage.input_tokens == total - system_tokens


def test_small_or_unmarked_system_is_not_cached(client: anthropic.Anthropic) -> None:
    big = "y" * 8000
    for _ in range(2):
        unmarked = client.messages.create(
            model=MODEL, max_tokens=20, system=big, messages=_user("a")
        )
        assert unmarked.usage.cache_read_input_tokens == 0
        assert unmarked.usage.cache_creation_input_tokens == 0
    small = [{"type": "text", "text": "short", "cache_control": {"type": "ephemeral"}}]
    for _ in range(2):
        answer = client.messages.create(
            model=MODEL, max_tokens=20, system=small, messages=_user("a")
        )
        assert answer.usage.cache_read_input_tokens == 0


def test_streaming_text_reports_usage(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL, max_tokens=300, messages=_user("stream please")
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1
    assert "".join(pieces) == final.content[0].text
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == count_tokens("stream please")
    assert final.usage.output_tokens == count_tokens(final.content[0].text)


def test_streaming_tool_use_rebuilds_input(client: anthropic.Anthropic) -> None:
    schema = Triage.model_json_schema()
    with client.messages.stream(
        model=MODEL,
        max_tokens=500,
        messages=_user("Triage"),
        tools=[{"name": "triage", "description": "Record", "input_schema": schema}],
        tool_choice={"type": "tool", "name": "triage"},
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and "content_block_delta" in kinds
    assert final.stop_reason == "tool_use"
    jsonschema.validate(final.content[0].input, schema)


def test_raw_event_sequence(sandbox: SandboxThread, anthropic_key: str) -> None:
    body = {"model": MODEL, "max_tokens": 100, "stream": True, "messages": _user("hi")}
    headers = {"x-api-key": anthropic_key, "anthropic-version": "2023-06-01"}
    reply = httpx.post(sandbox.base_urls["anthropic"] + "/v1/messages", json=body, headers=headers)
    events = [
        line[len("event: ") :] for line in reply.text.splitlines() if line.startswith("event: ")
    ]
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert events[:3] == ["message_start", "content_block_start", "ping"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(events[3:-3]) == {"content_block_delta"}


def test_headers_and_request_id(sandbox: SandboxThread, anthropic_key: str) -> None:
    body = {"model": MODEL, "max_tokens": 10, "messages": _user("hi")}
    reply = httpx.post(
        sandbox.base_urls["anthropic"] + "/v1/messages",
        json=body,
        headers={"x-api-key": anthropic_key, "anthropic-version": "2023-06-01"},
    )
    assert reply.status_code == 200
    assert reply.headers["request-id"].startswith("req_")
    assert reply.headers["anthropic-ratelimit-requests-limit"] == "4000"
    assert reply.headers["anthropic-ratelimit-requests-remaining"] == "3999"
    for name in ("requests-reset", "tokens-limit", "tokens-remaining", "tokens-reset"):
        assert reply.headers[f"anthropic-ratelimit-{name}"]


def test_missing_credentials_and_version(sandbox: SandboxThread, anthropic_key: str) -> None:
    url = sandbox.base_urls["anthropic"] + "/v1/messages"
    body = {"model": MODEL, "max_tokens": 10, "messages": _user("hi")}
    no_key = httpx.post(url, json=body, headers={"anthropic-version": "2023-06-01"})
    assert no_key.status_code == 401
    assert no_key.json()["error"]["type"] == "authentication_error"
    assert no_key.json()["request_id"] == no_key.headers["request-id"]
    no_version = httpx.post(url, json=body, headers={"x-api-key": anthropic_key})
    assert no_version.status_code == 400
    assert no_version.json()["error"] == {
        "type": "invalid_request_error",
        "message": "anthropic-version: header is required",
    }


def test_invalid_body_is_bad_request(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, max_tokens=10, messages=[])
    assert caught.value.status_code == 400
    assert caught.value.body["error"]["type"] == "invalid_request_error"


def test_rate_limit_maps_to_rate_limit_error(
    sandbox: SandboxThread, client: anthropic.Anthropic
) -> None:
    sandbox.set_faults("ratelimit:anthropic")
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model=MODEL, max_tokens=10, messages=_user("hi"))
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert caught.value.body["error"]["type"] == "rate_limit_error"


def test_overload_maps_to_internal_server_error(
    sandbox: SandboxThread, client: anthropic.Anthropic
) -> None:
    sandbox.set_faults("outage:anthropic")
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(model=MODEL, max_tokens=10, messages=_user("hi"))
    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"


def test_api_error_500(sandbox: SandboxThread, client: anthropic.Anthropic) -> None:
    sandbox.set_faults("status:anthropic:500")
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(model=MODEL, max_tokens=10, messages=_user("hi"))
    assert caught.value.status_code == 500
    assert caught.value.body["error"]["type"] == "api_error"


def test_refusal_has_no_tool_use(sandbox: SandboxThread, client: anthropic.Anthropic) -> None:
    sandbox.set_faults("safety-blocked")
    message = client.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=_user("x"),
        tools=[{"name": "t", "description": "d", "input_schema": {"type": "object"}}],
        tool_choice={"type": "tool", "name": "t"},
    )
    assert message.stop_reason == "refusal"
    assert [b for b in message.content if b.type == "tool_use"] == []


def test_count_tokens_agrees_with_the_message_usage(client: anthropic.Anthropic) -> None:
    tool = {"name": "triage", "description": "Record the answer.",
            "input_schema": Triage.model_json_schema()}
    request = {"model": MODEL, "system": "Classify the mail.", "messages": _user("Server down, help"),
               "tools": [tool], "tool_choice": {"type": "tool", "name": "triage"}}
    counted = client.messages.count_tokens(**request)  # type: ignore[arg-type]  # the SDK's TypedDicts
    message = client.messages.create(max_tokens=500, **request)  # type: ignore[arg-type]
    assert counted.input_tokens == message.usage.input_tokens == count_tokens(
        "\n".join([json.dumps([tool]), "Classify the mail.", "Server down, help"])) + 313
    auto = client.messages.count_tokens(model=MODEL, system="Classify the mail.",  # type: ignore[arg-type]
                                        messages=_user("Server down, help"), tools=[tool])
    assert auto.input_tokens == counted.input_tokens + 346 - 313  # tool_choice auto: the longer prompt
    plain = client.messages.count_tokens(model=MODEL, system="Be brief.", messages=_user("Summarise my inbox"))
    assert plain.input_tokens == count_tokens("Be brief.\nSummarise my inbox")


def test_count_tokens_counts_cached_input_too(client: anthropic.Anthropic) -> None:
    system_text = "Policy " + secrets.token_hex(8) + " " + "x" * 5000
    system = [{"type": "text", "text": system_text, "cache_control": {"type": "ephemeral"}}]
    counted = client.messages.count_tokens(model=MODEL, system=system, messages=_user("one"))  # type: ignore[arg-type]
    message = client.messages.create(model=MODEL, max_tokens=50, system=system, messages=_user("one"))  # type: ignore[arg-type]
    usage = message.usage
    assert usage.cache_creation_input_tokens == count_tokens(system_text)
    assert counted.input_tokens == usage.input_tokens + usage.cache_creation_input_tokens
    assert counted.input_tokens == count_tokens(system_text + "\none")


def test_count_tokens_refuses_sampling_fields(sandbox: SandboxThread, anthropic_key: str) -> None:
    reply = httpx.post(
        sandbox.base_urls["anthropic"] + "/v1/messages/count_tokens",
        headers={"x-api-key": anthropic_key, "anthropic-version": "2023-06-01"},
        json={"model": MODEL, "max_tokens": 10, "messages": _user("hi")},
    )
    assert reply.status_code == 400
    assert reply.json()["error"] == {"type": "invalid_request_error",
                                     "message": "max_tokens: Extra inputs are not permitted"}


def test_count_fault_fails_only_the_count(sandbox: SandboxThread, client: anthropic.Anthropic) -> None:
    sandbox.set_faults("count:anthropic:500")
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.count_tokens(model=MODEL, messages=_user("hi"))
    assert caught.value.status_code == 500
    assert caught.value.body["error"]["type"] == "api_error"
    assert client.messages.create(model=MODEL, max_tokens=10, messages=_user("hi")).stop_reason
    assert sandbox.stats()["counts"]["anthropic"] == 1
    assert sandbox.stats()["providers"]["anthropic"]["requests"] == 1
