"""DeepSeek (OpenAI Chat Completions) sandbox: ``POST {base}/chat/completions`` and
``POST {base}/v1/chat/completions`` with ``base = /deepseek``.

Follows the DeepSeek API docs ("Create Chat Completion", "JSON Output", "Context Caching",
"Reasoning Model", "Error Codes") and the OpenAI Chat Completions reference for the shared shape:

- ``Authorization: Bearer <key>`` is required (else 401 ``authentication_error``).
- ``model`` and a non-empty ``messages`` list are required; the body is checked against the
  Chat Completions request shape (:func:`_check`): a malformed body (invalid JSON, an unpaired
  surrogate, a wrong type or role) is 400; ``max_tokens`` < 1 or ``temperature`` outside 0..2
  (or not a number) is 422.
- ``response_format`` ``{"type": "json_schema", "json_schema": {"schema": S}}``: the content is a
  JSON instance of ``S``. ``{"type": "json_object"}``: by this sandbox's convention the **last
  fenced ```json block in the system or user messages** gives the answer's shape: a JSON Schema
  (an object with ``properties``, ``$ref``, ``$defs``, ``$schema``, ``anyOf``/``oneOf``/``allOf``
  or a JSON type name as ``type``) yields an instance of it; any other non-empty object is an
  example answer and is returned as it is; without such a block (or if it is not a JSON object)
  the content is ``{}``.
- Model ``deepseek-reasoner`` adds ``message.reasoning_content``; its tokens are inside
  ``completion_tokens`` and reported as ``completion_tokens_details.reasoning_tokens``.
- Usage: ``prompt_tokens`` over all message texts (:mod:`opsgate.sandbox.synth`). The first
  system message is the cacheable prefix: from its second sighting, its tokens rounded down to
  64-token units are ``prompt_cache_hit_tokens``; hit + miss = prompt_tokens.
- ``"stream": true``: ``data: {chunk}`` lines (role, content pieces, a final chunk with
  ``finish_reason``), with ``stream_options.include_usage`` one more chunk with ``choices: []``
  and ``usage``, then ``data: [DONE]``.
- Errors: ``{"error": {"message", "type", "param", "code"}}``; 429 carries ``Retry-After``.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from opsgate.sandbox.body import BodyError, expect, objects, one_of, optional, read_json, required
from opsgate.sandbox.faults import Outcome
from opsgate.sandbox.instance import UnsupportedSchemaError, answer_for
from opsgate.sandbox.malformed import Event, malformed_json, malformed_stream
from opsgate.sandbox.models import served_model
from opsgate.sandbox.sse import send_event, start_sse
from opsgate.sandbox.state import CACHE_MIN_TOKENS, DEEPSEEK_CACHE_UNIT, STATE, SandboxState
from opsgate.sandbox.synth import count_tokens, reply_text, split_text, truncate_to_tokens

PROVIDER = "deepseek"
OVERLOAD_STATUS = 503
RETRY_AFTER_S = 1
REASONER_MODEL = "deepseek-reasoner"
SYSTEM_FINGERPRINT = "fp_sandbox_0001"
REQUIRED_FIELDS = ("choices", "usage")
_SCHEMA_KEYWORDS = frozenset({"properties", "$ref", "$defs", "$schema", "anyOf", "oneOf", "allOf"})
_JSON_TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean", "null"})
_FENCED_JSON = re.compile(r"```json\s*\n(.*?)```", re.DOTALL)

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid format: the request body is not valid."),
    401: ("authentication_error", "Authentication Fails, Your api key is invalid"),
    402: ("invalid_request_error", "Insufficient Balance"),
    404: ("invalid_request_error", "The model does not exist or you do not have access to it."),
    422: ("invalid_request_error", "Invalid Parameters"),
    429: ("rate_limit_error", "Rate Limit Reached"),
    500: ("api_error", "Server Error"),
    503: ("api_error", "Server Overloaded"),
}


class _RequestError(ValueError):
    """The body breaks the API contract; ``status`` is 400 (format) or 422 (parameters)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class _Request:
    model: str
    max_tokens: int | None
    stream: bool
    include_usage: bool
    system: str
    prompt: str
    last_user: str
    schema: dict[str, Any] | None


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    """``POST /deepseek[/v1]/chat/completions``: see the module docstring."""
    state = request.app[STATE]
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return _error(401)
    try:
        parsed = _parse(await read_json(request))
    except _RequestError as exc:
        return _error(exc.status, str(exc))
    except BodyError as exc:
        return _error(400, f"Invalid format: {exc}")
    served = served_model(PROVIDER, parsed.model, state.faults.profile)
    if served is None:
        return _error(404, f"The model `{parsed.model}` does not exist or you do not have access to it.",
                      code="model_not_found")
    tokens = count_tokens(parsed.prompt)
    window = state.faults.profile.too_long(PROVIDER, tokens)
    if window is not None:
        completion_tokens = parsed.max_tokens or 0
        return _error(400, f"This model's maximum context length is {window} tokens. However, you "
                           f"requested {tokens + completion_tokens} tokens ({tokens} in the messages, "
                           f"{completion_tokens} in the completion). Please reduce the length of the "
                           "messages or completion.")
    decision = state.faults.decide(PROVIDER)
    await decision.wait()
    status = decision.error_status(OVERLOAD_STATUS)
    if status is not None:
        return _error(status)
    if decision.outcome is Outcome.POLICY_REFUSED:
        return _error(400, "Content Exists Risk")
    try:
        completion = _completion(parsed, state, filtered=decision.outcome is Outcome.SAFETY_BLOCKED,
                                 off_schema=decision.outcome is Outcome.OFF_SCHEMA)
    except UnsupportedSchemaError as exc:
        return _error(400, f"Invalid response_format schema: {exc}")
    completion["model"] = served
    if decision.outcome is Outcome.MALFORMED and parsed.stream:
        return await malformed_stream(request, _events(completion, True), decision.variant, {})
    if decision.outcome is Outcome.MALFORMED:
        return malformed_json(completion, REQUIRED_FIELDS, decision.variant, {})
    if parsed.stream:
        return await _stream(request, completion, parsed.include_usage)
    return web.json_response(completion)


def _parse(body: Any) -> _Request:
    """The Chat Completions request ``body``, checked by :func:`_check`; raises
    :class:`~opsgate.sandbox.body.BodyError` (400) or :class:`_RequestError` (422)."""
    _check(body)
    model, messages = body["model"], body["messages"]
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    texts = [(m["role"], _text(m.get("content"))) for m in messages]
    systems = [t for role, t in texts if role == "system"]
    users = [t for role, t in texts if role == "user"]
    options = body.get("stream_options") or {}
    return _Request(
        model=model,
        max_tokens=max_tokens,
        stream=body.get("stream") is True,
        include_usage=bool(options.get("include_usage")),
        system=systems[0] if systems else "",
        prompt="\n".join(t for _, t in texts if t),
        last_user=users[-1] if users else "",
        schema=_schema(
            body.get("response_format"), [t for role, t in texts if role in ("system", "user")]
        ),
    )


def _check(body: Any) -> None:
    """Raise :class:`~opsgate.sandbox.body.BodyError` unless ``body`` has the Chat Completions
    request shape: ``model`` (string), a non-empty ``messages`` list of ``{"role": system | user |
    assistant | tool, "content": string or content parts}`` (an assistant's content may be null),
    ``stream`` (boolean), ``stream_options`` and ``response_format`` objects, ``tools`` (objects);
    :class:`_RequestError` 422 for ``max_tokens`` < 1 or ``temperature`` outside 0..2."""
    expect(body, "body", dict)
    if not required(body, "model", "", str):
        raise BodyError("model: String should have at least 1 character")
    messages = objects(required(body, "messages", "", list), "messages")
    if not messages:
        raise BodyError("messages: at least one message is required")
    for index, message in enumerate(messages):
        path = f"messages.{index}."
        role = one_of(message.get("role"), f"{path}role", ("system", "user", "assistant", "tool"))
        content = message.get("content")
        if content is not None or role != "assistant":
            _check_content(required(message, "content", path, str, list), f"{path}content")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
        raise _RequestError(
            422, "Invalid max_tokens value, the valid range of max_tokens is [1, 8192]"
        )
    temperature = body.get("temperature", 1)
    if type(temperature) not in (int, float) or not 0 <= temperature <= 2:
        raise _RequestError(422, "Invalid temperature value, the valid range is [0, 2]")
    optional(body, "stream", "", bool)
    optional(optional(body, "stream_options", "", dict) or {}, "include_usage", "stream_options.",
             bool)
    objects(optional(body, "tools", "", list) or [], "tools")
    response_format = optional(body, "response_format", "", dict)
    if response_format is not None and one_of(
        response_format.get("type"), "response_format.type", ("text", "json_object", "json_schema")
    ) == "json_schema":
        spec = required(response_format, "json_schema", "response_format.", dict)
        optional(spec, "schema", "response_format.json_schema.", dict)


def _check_content(content: str | list[Any], path: str) -> None:
    """Content parts: objects with a string ``type``; a text part has a string ``text``."""
    if isinstance(content, str):
        return
    for index, part in enumerate(objects(content, path)):
        if required(part, "type", f"{path}.{index}.", str) == "text":
            required(part, "text", f"{path}.{index}.", str)


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _schema(response_format: Any, prompts: list[str]) -> dict[str, Any] | None:
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema") or {}
        return spec.get("schema") or {"type": "object"}
    if response_format.get("type") != "json_object":
        return None
    blocks = [b for text in prompts for b in _FENCED_JSON.findall(text)]
    try:
        shown = json.loads(blocks[-1]) if blocks else None
    except ValueError:
        shown = None
    if not isinstance(shown, dict) or not shown:
        return {"type": "object", "properties": {}}
    return shown if _is_schema(shown) else {"const": shown}


def _is_schema(value: dict[str, Any]) -> bool:
    """Whether a JSON object shown in a prompt is a JSON Schema rather than an example answer."""
    return bool(_SCHEMA_KEYWORDS & value.keys()) or value.get("type") in _JSON_TYPES


def _completion(req: _Request, state: SandboxState, *, filtered: bool, off_schema: bool) -> dict[str, Any]:
    if filtered:
        content, finish = "", "content_filter"
    elif req.schema is not None:
        content, finish = json.dumps(answer_for(req.schema, off_schema=off_schema)), "stop"
    else:
        full = reply_text(req.model, req.last_user)
        content = truncate_to_tokens(full, req.max_tokens) if req.max_tokens else full
        finish = "stop" if content == full else "length"
    message: dict[str, Any] = {"role": "assistant", "content": content}
    reasoning = ""
    if req.model == REASONER_MODEL and not filtered:
        reasoning = f"The user wants an answer from {req.model}; I will give it."
        message["reasoning_content"] = reasoning
    return {
        "id": state.next_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": _usage(req, state, count_tokens(content), count_tokens(reasoning)),
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def _usage(
    req: _Request, state: SandboxState, content_tokens: int, reasoning_tokens: int
) -> dict[str, Any]:
    prompt_tokens = count_tokens(req.prompt)
    prefix = count_tokens(req.system)
    cacheable = prefix // DEEPSEEK_CACHE_UNIT * DEEPSEEK_CACHE_UNIT
    hit = 0
    if prefix >= CACHE_MIN_TOKENS[PROVIDER] and state.cache.seen_before(
        PROVIDER, req.model, req.system
    ):
        hit = cacheable
    completion_tokens = content_tokens + reasoning_tokens
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": hit},
        "prompt_cache_hit_tokens": hit,
        "prompt_cache_miss_tokens": prompt_tokens - hit,
    }
    if reasoning_tokens:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return usage


def _events(completion: dict[str, Any], include_usage: bool) -> list[Event]:
    choice = completion["choices"][0]
    message = choice["message"]
    head = {k: completion[k] for k in ("id", "created", "model", "system_fingerprint")}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> Event:
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        return None, {**head, "object": "chat.completion.chunk", "choices": choices}

    events = [chunk({"role": "assistant", "content": ""})]
    events += [
        chunk({"reasoning_content": p}) for p in split_text(message.get("reasoning_content", ""))
    ]
    events += [chunk({"content": p}) for p in split_text(message["content"])]
    events.append(chunk({}, choice["finish_reason"]))
    if include_usage:
        events.append(
            (
                None,
                {
                    **head,
                    "object": "chat.completion.chunk",
                    "choices": [],
                    "usage": completion["usage"],
                },
            )
        )
    return events


async def _stream(
    request: web.Request, completion: dict[str, Any], include_usage: bool
) -> web.StreamResponse:
    response = await start_sse(request)
    for _, data in _events(completion, include_usage):
        await send_event(response, data)
    await send_event(response, "[DONE]")
    await response.write_eof()
    return response


def _error(status: int, message: str | None = None, *, code: str | None = None) -> web.Response:
    kind, default = _ERRORS.get(status, ("api_error", "Server Error"))
    body = {
        "error": {
            "message": message or default,
            "type": kind,
            "param": None,
            "code": code or ("invalid_request_error" if status < 500 else None),
        }
    }
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 429 else {}
    return web.json_response(body, status=status, headers=headers)


def add_routes(app: web.Application) -> None:
    """Register the DeepSeek routes on ``app``."""
    app.router.add_post("/deepseek/chat/completions", create_chat_completion)
    app.router.add_post("/deepseek/v1/chat/completions", create_chat_completion)
