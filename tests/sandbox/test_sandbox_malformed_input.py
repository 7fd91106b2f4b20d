"""Malformed request bodies: every sandbox endpoint answers 400 in its provider's error format
(never a 500), for wrong types, missing fields, unknown roles, invalid JSON and unpaired
surrogates; well-formed bodies of the same shapes still answer 200."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from opsgate.sandbox import SandboxThread

ANTHROPIC_MODEL = "claude-opus-5"
GEMINI_MODEL = "gemini-3.8-flash"
USER = {"role": "user", "content": "hi"}
GEMINI_USER = {"role": "user", "parts": [{"text": "hi"}]}


@pytest.fixture(scope="module")
def running() -> Iterator[SandboxThread]:
    with SandboxThread() as sandbox:
        yield sandbox


def _anthropic(extra: dict[str, Any], *, counting: bool) -> dict[str, Any]:
    base: dict[str, Any] = {"model": ANTHROPIC_MODEL, "messages": [USER]}
    if not counting:
        base["max_tokens"] = 16
    return {**base, **extra}


ANTHROPIC_BAD: list[tuple[str, Any]] = [
    ("content-int", {"messages": [{"role": "user", "content": 123}]}),
    ("system-int", {"system": 123}),
    ("surrogate-content", {"messages": [{"role": "user", "content": "\ud800"}]}),
    ("surrogate-system", {"system": "a\udc00b"}),
    ("messages-ints", {"messages": [1, 2]}),
    ("messages-empty", {"messages": []}),
    ("messages-string", {"messages": "hi"}),
    ("message-without-content", {"messages": [{"role": "user"}]}),
    ("role-robot", {"messages": [{"role": "robot", "content": "hi"}]}),
    ("text-block-without-text", {"messages": [{"role": "user", "content": [{"type": "text"}]}]}),
    ("text-block-int", {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}),
    ("block-without-type", {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}),
    ("block-not-object", {"messages": [{"role": "user", "content": ["hi"]}]}),
    ("tool-result-int", {"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": 5}]}]}),
    ("tools-string", {"tools": "x"}),
    ("tool-without-name", {"tools": [{"input_schema": {"type": "object"}}]}),
    ("tool-schema-list", {"tools": [{"name": "t", "input_schema": []}]}),
    ("tool-choice-string", {"tool_choice": "auto"}),
    ("tool-choice-unknown", {"tool_choice": {"type": "maybe"}}),
    ("system-block-int-text", {"system": [{"type": "text", "text": 1}]}),
    ("system-block-image", {"system": [{"type": "image", "source": {}}]}),
    ("model-int", {"model": 123}),
    ("model-empty", {"model": ""}),
    ("model-missing", {"model": None}),
]
ANTHROPIC_MESSAGE_ONLY: list[tuple[str, Any]] = [
    ("max-tokens-string", {"max_tokens": "16"}),
    ("max-tokens-bool", {"max_tokens": True}),
    ("max-tokens-zero", {"max_tokens": 0}),
    ("stream-string", {"stream": "yes"}),
]


def _post_anthropic(running: SandboxThread, path: str, content: bytes) -> httpx.Response:
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01",
               "content-type": "application/json"}
    return httpx.post(running.base_urls["anthropic"] + path, content=content, headers=headers)


def _assert_anthropic_400(reply: httpx.Response) -> str:
    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["request_id"].startswith("req_")
    message: str = body["error"]["message"]
    assert message
    return message


@pytest.mark.parametrize(
    ("path", "extra"),
    [("/v1/messages", e) for _, e in ANTHROPIC_BAD + ANTHROPIC_MESSAGE_ONLY]
    + [("/v1/messages/count_tokens", e) for _, e in ANTHROPIC_BAD],
    ids=[f"messages-{n}" for n, _ in ANTHROPIC_BAD + ANTHROPIC_MESSAGE_ONLY]
    + [f"count-{n}" for n, _ in ANTHROPIC_BAD],
)
def test_anthropic_malformed_body_is_400(running: SandboxThread, path: str, extra: Any) -> None:
    body = _anthropic(extra, counting=path.endswith("count_tokens"))
    body = {k: v for k, v in body.items() if v is not None}
    _assert_anthropic_400(_post_anthropic(running, path, json.dumps(body).encode()))


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
@pytest.mark.parametrize("raw", [b"{", b"[1]", b"null", b"\xff\xfe", b'{"model": "\\ud800"}'])
def test_anthropic_unparsable_body_is_400(running: SandboxThread, path: str, raw: bytes) -> None:
    _assert_anthropic_400(_post_anthropic(running, path, raw))


def test_anthropic_messages_name_the_field(running: SandboxThread) -> None:
    reply = _post_anthropic(running, "/v1/messages/count_tokens", json.dumps(
        _anthropic({"model": 123}, counting=True)).encode())
    assert _assert_anthropic_400(reply) == "model: Input should be a string"
    reply = _post_anthropic(running, "/v1/messages", json.dumps(
        _anthropic({"messages": [USER, {"role": "robot", "content": "x"}]}, counting=False)).encode())
    assert _assert_anthropic_400(reply) == (
        "messages.1.role: Input should be one of 'user', 'assistant'")
    reply = _post_anthropic(running, "/v1/messages", json.dumps(
        _anthropic({"system": "\ud800"}, counting=False)).encode())
    assert _assert_anthropic_400(reply) == (
        "body.system: string is not valid Unicode (unpaired surrogate)")


def test_anthropic_well_formed_bodies_still_count(running: SandboxThread) -> None:
    body = _anthropic({
        "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "abcd"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f",
                                               "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                          "content": [{"type": "text", "text": "ok"}]}]},
        ],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "auto"},
    }, counting=True)
    reply = _post_anthropic(running, "/v1/messages/count_tokens", json.dumps(body).encode())
    assert reply.status_code == 200, reply.text
    prompt = "\n".join([json.dumps(body["tools"]), "sys", "abcd", "ok"])  # tool_use: no text
    assert reply.json() == {"input_tokens": -(-len(prompt.encode()) // 4) + 346}  # + tool-use system prompt (auto)


GEMINI_BAD: list[tuple[str, Any]] = [
    ("surrogate-text", {"contents": [{"role": "user", "parts": [{"text": "\ud800"}]}]}),
    ("contents-ints", {"contents": [1]}),
    ("contents-empty", {"contents": []}),
    ("contents-object", {"contents": {"parts": [{"text": "hi"}]}}),
    ("parts-string", {"contents": [{"role": "user", "parts": "x"}]}),
    ("parts-missing", {"contents": [{"role": "user"}]}),
    ("parts-empty", {"contents": [{"role": "user", "parts": []}]}),
    ("part-int", {"contents": [{"role": "user", "parts": [1]}]}),
    ("text-int", {"contents": [{"role": "user", "parts": [{"text": 5}]}]}),
    ("role-robot", {"contents": [{"role": "robot", "parts": [{"text": "hi"}]}]}),
    ("system-int", {"contents": [GEMINI_USER], "systemInstruction": 123}),
    ("system-parts-int", {"contents": [GEMINI_USER], "systemInstruction": {"parts": 1}}),
    ("config-string", {"contents": [GEMINI_USER], "generationConfig": "x"}),
    ("config-empty-list", {"contents": [GEMINI_USER], "generation_config": []}),
    ("thinking-config-int", {"contents": [GEMINI_USER],
                             "generationConfig": {"thinkingConfig": 0}}),
    ("max-output-string", {"contents": [GEMINI_USER], "generationConfig": {"maxOutputTokens": "9"}}),
    ("thinking-budget-string", {"contents": [GEMINI_USER],
                                "generationConfig": {"thinkingConfig": {"thinking_budget": "a"}}}),
]


def _post_gemini(running: SandboxThread, action: str, content: bytes) -> httpx.Response:
    url = f"{running.base_urls['gemini']}/v1beta/models/{GEMINI_MODEL}:{action}"
    headers = {"x-goog-api-key": "k", "content-type": "application/json"}
    return httpx.post(url, content=content, headers=headers)


def _assert_gemini_400(reply: httpx.Response) -> str:
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT"
    message: str = error["message"]
    assert message.startswith("Invalid JSON payload: ")
    return message


@pytest.mark.parametrize("action", ["generateContent", "streamGenerateContent"])
@pytest.mark.parametrize(("name", "body"), GEMINI_BAD, ids=[n for n, _ in GEMINI_BAD])
def test_gemini_malformed_generate_is_400(running: SandboxThread, action: str, name: str,
                                          body: Any) -> None:
    _assert_gemini_400(_post_gemini(running, action, json.dumps(body).encode()))


@pytest.mark.parametrize(("name", "body"), GEMINI_BAD, ids=[n for n, _ in GEMINI_BAD])
def test_gemini_malformed_count_is_400(running: SandboxThread, name: str, body: Any) -> None:
    if set(body) == {"contents"}:
        _assert_gemini_400(_post_gemini(running, "countTokens", json.dumps(body).encode()))
    wrapped = {"generateContentRequest": {"model": f"models/{GEMINI_MODEL}", **body}}
    _assert_gemini_400(_post_gemini(running, "countTokens", json.dumps(wrapped).encode()))


@pytest.mark.parametrize("raw", [b"{", b"[]", b"7", b'{"generateContentRequest": 1}',
                                 b'{"contents": [1], "generateContentRequest": {}}'])
def test_gemini_unparsable_count_is_400(running: SandboxThread, raw: bytes) -> None:
    _assert_gemini_400(_post_gemini(running, "countTokens", raw))


def test_gemini_messages_name_the_field(running: SandboxThread) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "\ud800"}]}]}
    assert _assert_gemini_400(_post_gemini(running, "countTokens", json.dumps(body).encode())) == (
        "Invalid JSON payload: body.contents.0.parts.0.text: string is not valid Unicode "
        "(unpaired surrogate)")
    body = {"contents": [{"role": "user", "parts": "x"}]}
    assert _assert_gemini_400(_post_gemini(running, "countTokens", json.dumps(body).encode())) == (
        "Invalid JSON payload: contents[0].parts: Input should be a list")


def test_gemini_well_formed_bodies_still_count(running: SandboxThread) -> None:
    body = {"contents": [GEMINI_USER, {"role": "model", "parts": [{"text": "yo"}]},
                         {"parts": [{"inlineData": {"mimeType": "text/plain", "data": ""}}]}]}
    reply = _post_gemini(running, "countTokens", json.dumps(body).encode())
    assert reply.status_code == 200, reply.text
    assert reply.json()["totalTokens"] == 2  # "hi\nyo": 5 bytes (the inlineData part has no text)
    whole = {"generateContentRequest": {"model": f"models/{GEMINI_MODEL}", **body,
                                        "systemInstruction": {"parts": [{"text": "sys"}]},
                                        "generationConfig": {"maxOutputTokens": 5}}}
    reply = _post_gemini(running, "countTokens", json.dumps(whole).encode())
    assert reply.status_code == 200, reply.text
    assert reply.json()["totalTokens"] == 3  # "sys\nhi\nyo": 9 bytes


DEEPSEEK_BAD: list[tuple[str, Any]] = [
    ("content-int", {"messages": [{"role": "user", "content": 123}]}),
    ("surrogate-content", {"messages": [{"role": "user", "content": "\ud800"}]}),
    ("messages-ints", {"messages": [1, 2]}),
    ("messages-empty", {"messages": []}),
    ("message-without-content", {"messages": [{"role": "user"}]}),
    ("role-robot", {"messages": [{"role": "robot", "content": "hi"}]}),
    ("part-without-text", {"messages": [{"role": "user", "content": [{"type": "text"}]}]}),
    ("part-text-int", {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}),
    ("part-string", {"messages": [{"role": "user", "content": ["hi"]}]}),
    ("model-int", {"model": 123}),
    ("stream-string", {"stream": "yes"}),
    ("stream-options-string", {"stream_options": "x"}),
    ("response-format-string", {"response_format": "json"}),
    ("response-format-unknown", {"response_format": {"type": "yaml"}}),
    ("json-schema-missing", {"response_format": {"type": "json_schema"}}),
    ("tools-string", {"tools": "x"}),
]


def _post_deepseek(running: SandboxThread, content: bytes) -> httpx.Response:
    headers = {"Authorization": "Bearer k", "content-type": "application/json"}
    return httpx.post(running.base_urls["deepseek"] + "/chat/completions", content=content,
                      headers=headers)


@pytest.mark.parametrize(("name", "extra"), DEEPSEEK_BAD, ids=[n for n, _ in DEEPSEEK_BAD])
def test_deepseek_malformed_body_is_400(running: SandboxThread, name: str, extra: Any) -> None:
    body = {"model": "deepseek-chat", "messages": [USER], **extra}
    reply = _post_deepseek(running, json.dumps(body).encode())
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_request_error"
    assert error["message"].startswith("Invalid format: ")


@pytest.mark.parametrize("extra", [{"max_tokens": True}, {"max_tokens": "5"},
                                   {"temperature": False}, {"temperature": "1"}])
def test_deepseek_bad_parameters_are_422(running: SandboxThread, extra: dict[str, Any]) -> None:
    reply = _post_deepseek(running, json.dumps({"model": "deepseek-chat", "messages": [USER],
                                                **extra}).encode())
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["type"] == "invalid_request_error"


def test_deepseek_assistant_tool_call_without_content_is_accepted(running: SandboxThread) -> None:
    body = {"model": "deepseek-chat", "messages": [
        USER,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
    ]}
    reply = _post_deepseek(running, json.dumps(body).encode())
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["prompt_tokens"] == 2  # "hi\ndone": 7 bytes
