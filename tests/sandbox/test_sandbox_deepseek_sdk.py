"""The DeepSeek sandbox, driven by the official ``openai`` SDK (retries off)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from opsgate.sandbox import SandboxThread
from opsgate.sandbox.synth import count_tokens

CHAT = "deepseek-chat"


class Plan(BaseModel):
    steps: list[str] = Field(min_length=3)
    hours: float = Field(gt=0, le=8)
    owner: str | None


@pytest.fixture
def client(sandbox: SandboxThread, deepseek_key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        api_key=deepseek_key, base_url=sandbox.base_urls["deepseek"], max_retries=0
    ) as sdk:
        yield sdk


def _messages(system: str, user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def test_completion_parses_with_deepseek_usage(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=CHAT, messages=_messages("Be brief.", "Plan my day")
    )
    choice = completion.choices[0]
    assert completion.object == "chat.completion"
    assert completion.model == CHAT and completion.system_fingerprint
    assert choice.finish_reason == "stop" and choice.index == 0 and choice.logprobs is None
    assert "Plan my day" in choice.message.content
    usage = completion.usage
    assert usage.prompt_tokens == count_tokens("Be brief.\nPlan my day")
    assert usage.completion_tokens == count_tokens(choice.message.content)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.model_extra == {
        "prompt_cache_hit_tokens": 0,
        "prompt_cache_miss_tokens": usage.prompt_tokens,
    }


def test_v1_path_also_served(sandbox: SandboxThread, deepseek_key: str) -> None:
    with openai.OpenAI(
        api_key=deepseek_key, base_url=sandbox.base_urls["deepseek"] + "/v1", max_retries=0
    ) as sdk:
        completion = sdk.chat.completions.create(model=CHAT, messages=_messages("s", "u"))
    assert completion.choices[0].message.role == "assistant"


def test_reasoner_reports_reasoning(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="deepseek-reasoner", messages=_messages("s", "why?")
    )
    message = completion.choices[0].message
    reasoning = message.model_extra["reasoning_content"]
    assert reasoning
    details = completion.usage.completion_tokens_details
    assert details is not None and details.reasoning_tokens == count_tokens(reasoning)
    assert completion.usage.completion_tokens == count_tokens(reasoning) + count_tokens(
        message.content
    )


def test_json_schema_answer_validates(client: openai.OpenAI) -> None:
    schema = Plan.model_json_schema()
    completion = client.chat.completions.create(
        model=CHAT,
        messages=_messages("Plan", "Break it down"),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "plan", "schema": schema, "strict": True},
        },
    )
    data = json.loads(completion.choices[0].message.content)
    jsonschema.validate(data, schema)
    Plan.model_validate(data)


def test_json_object_uses_last_fenced_schema_in_prompt(client: openai.OpenAI) -> None:
    schema = Plan.model_json_schema()
    decoy = {"type": "object", "properties": {"wrong": {"type": "integer"}}, "required": ["wrong"]}
    system = f"Answer in JSON.\n```json\n{json.dumps(decoy)}\n```\n"
    user = f"Use this schema:\n```json\n{json.dumps(schema, indent=2)}\n```\nthanks"
    completion = client.chat.completions.create(
        model=CHAT, messages=_messages(system, user), response_format={"type": "json_object"}
    )
    data = json.loads(completion.choices[0].message.content)
    jsonschema.validate(data, schema)
    assert "wrong" not in data


def test_unanswerable_schema_is_a_bad_request(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^Q[0-9]{9}$"}},
        "required": ["code"],
    }
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=CHAT,
            messages=_messages("s", "u"),
            response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
        )
    assert "pattern" in caught.value.message


def test_json_object_echoes_an_example_shape(client: openai.OpenAI) -> None:
    example = {"type": "meeting", "minutes": 30, "people": ["ana", "bo"]}
    user = f"Reply with JSON like:\n```json\n{json.dumps(example)}\n```"
    completion = client.chat.completions.create(
        model=CHAT, messages=_messages("json", user), response_format={"type": "json_object"}
    )
    assert json.loads(completion.choices[0].message.content) == example


def test_json_object_without_schema_is_empty_object(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=CHAT, messages=_messages("json please", "go"), response_format={"type": "json_object"}
    )
    assert json.loads(completion.choices[0].message.content) == {}


def test_prefix_cache_hit_on_second_request(client: openai.OpenAI) -> None:
    system = "Rules " + secrets.token_hex(8) + " " + "z" * 1000
    prefix_tokens = count_tokens(system)
    first = client.chat.completions.create(model=CHAT, messages=_messages(system, "a"))
    second = client.chat.completions.create(model=CHAT, messages=_messages(system, "b"))
    assert first.usage.model_extra["prompt_cache_hit_tokens"] == 0
    hit = second.usage.model_extra["prompt_cache_hit_tokens"]
    assert hit == prefix_tokens // 64 * 64 and hit > 0
    assert hit + second.usage.model_extra["prompt_cache_miss_tokens"] == second.usage.prompt_tokens
    assert second.usage.prompt_tokens_details.cached_tokens == hit


def test_max_tokens_gives_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=CHAT, max_tokens=2, messages=_messages("s", "u")
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 2


def test_streaming_with_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=CHAT,
            messages=_messages("s", "stream it"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == count_tokens(text)
    assert "stream it" in text


def test_streaming_without_usage_and_done_marker(sandbox: SandboxThread, deepseek_key: str) -> None:
    body = {"model": CHAT, "messages": _messages("s", "u"), "stream": True}
    reply = httpx.post(
        sandbox.base_urls["deepseek"] + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {deepseek_key}"},
    )
    data = [line[len("data: ") :] for line in reply.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["choices"] for c in chunks)
    assert not any("usage" in c for c in chunks)


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, {"model": CHAT, "messages": [{"role": "user", "content": "x"}]}, 401),
        (
            {"Authorization": "Basic abc"},
            {"model": CHAT, "messages": [{"role": "user", "content": "x"}]},
            401,
        ),
        (None, {"model": CHAT}, 400),
        (
            None,
            {"model": CHAT, "messages": [{"role": "user", "content": "x"}], "temperature": 3},
            422,
        ),
    ],
)
def test_request_errors(
    sandbox: SandboxThread,
    deepseek_key: str,
    headers: dict[str, str] | None,
    body: dict[str, object],
    status: int,
) -> None:
    sent = {"Authorization": f"Bearer {deepseek_key}"} if headers is None else headers
    reply = httpx.post(sandbox.base_urls["deepseek"] + "/chat/completions", json=body, headers=sent)
    assert reply.status_code == status
    assert set(reply.json()["error"]) == {"message", "type", "param", "code"}


def test_rate_limit_error(sandbox: SandboxThread, client: openai.OpenAI) -> None:
    sandbox.set_faults("ratelimit:deepseek")
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=CHAT, messages=_messages("s", "u"))
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.body["type"] == "rate_limit_error"


def test_overload_is_503(sandbox: SandboxThread, client: openai.OpenAI) -> None:
    sandbox.set_faults("outage:deepseek")
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=CHAT, messages=_messages("s", "u"))
    assert caught.value.status_code == 503
    assert isinstance(caught.value, openai.InternalServerError)
    assert caught.value.message.endswith("Server Overloaded")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (402, openai.APIStatusError),
        (500, openai.InternalServerError),
        (422, openai.UnprocessableEntityError),
    ],
)
def test_configured_status(
    sandbox: SandboxThread, client: openai.OpenAI, status: int, error: type[openai.APIStatusError]
) -> None:
    sandbox.set_faults(f"status:deepseek:{status}")
    with pytest.raises(error) as caught:
        client.chat.completions.create(model=CHAT, messages=_messages("s", "u"))
    assert caught.value.status_code == status


def test_content_filter(sandbox: SandboxThread, client: openai.OpenAI) -> None:
    sandbox.set_faults("safety-blocked")
    completion = client.chat.completions.create(model=CHAT, messages=_messages("s", "u"))
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.choices[0].message.content == ""
