"""Anthropic Messages API sandbox: ``POST {base}/v1/messages`` with ``base = /anthropic``.

Follows the Messages API reference (docs.anthropic.com, "Messages", "Streaming Messages",
"Errors", "Rate limits", "Prompt caching"):

- Headers: ``x-api-key`` (or ``Authorization: Bearer <key>``, which the ``anthropic`` SDK 2.x
  sends for API keys; neither: 401 ``authentication_error``) and
  ``anthropic-version`` (missing: 400 ``invalid_request_error``, as the real API does).
- Body: ``model``, ``max_tokens`` and a non-empty ``messages`` list are required; the body is
  checked against the Messages request shape (:func:`_check`, shared with count_tokens): any
  malformed body (invalid JSON, an unpaired surrogate, a wrong type or role) is 400
  ``invalid_request_error`` naming the field.
- With ``tools`` and ``tool_choice`` ``{"type": "tool", "name": N}`` (or ``{"type": "any"}``: the
  first tool) the answer is one ``tool_use`` block whose ``input`` is
  :func:`~opsgate.sandbox.instance.instance_for` of that tool's ``input_schema``; stop_reason
  ``tool_use``. Otherwise one text block; if it would exceed ``max_tokens`` it is cut and
  stop_reason is ``max_tokens``.
- Usage: input tokens are counted over tools (as JSON), system and message texts
  (see :mod:`opsgate.sandbox.synth`), plus, when ``tools`` are sent, the tool-use system prompt
  Anthropic adds and bills (:data:`TOOL_PROMPT_TOKENS`; "Tool use pricing and tokens"). When a
  system block carries ``cache_control`` and the system text is at least 1,024 tokens, the system
  text is the cached prefix: the first request writes it
  (``cache_creation_input_tokens``, split by ``cache_control.ttl`` into
  ``cache_creation.ephemeral_5m_input_tokens`` / ``ephemeral_1h_input_tokens``), later ones read
  it (``cache_read_input_tokens``); ``input_tokens`` is the rest.
- ``"stream": true``: SSE message_start (input usage), content_block_start, ping,
  content_block_delta (``text_delta`` / ``input_json_delta``), content_block_stop, message_delta
  (stop_reason, cumulative ``output_tokens``), message_stop.
- Errors: ``{"type": "error", "error": {"type", "message"}, "request_id"}``; 429 carries
  ``retry-after``; every answer carries ``request-id`` and ``anthropic-ratelimit-*`` headers.
- ``POST {base}/v1/messages/count_tokens`` (Anthropic "Count Message tokens"): the same headers
  and body as a message without the sampling fields (``max_tokens``, ``temperature``, ``stream``,
  ... are refused with 400, "Extra inputs are not permitted"); answers ``{"input_tokens": N}``,
  N counted exactly as a message's input (``input_tokens`` + cache writes + cache reads of the
  same request), the tool-use system prompt included as the real count includes it (the token
  counting guide's one-tool example counts 403 tokens for a tool and a one-line question).
  Faults: :meth:`~opsgate.sandbox.faults.FaultState.decide_count`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from opsgate.sandbox.body import BodyError, expect, objects, one_of, optional, read_json, required
from opsgate.sandbox.faults import Outcome
from opsgate.sandbox.instance import UnsupportedSchemaError, answer_for
from opsgate.sandbox.malformed import Event, malformed_json, malformed_stream
from opsgate.sandbox.models import served_model
from opsgate.sandbox.sse import send_event, start_sse
from opsgate.sandbox.state import CACHE_MIN_TOKENS, STATE, SandboxState
from opsgate.sandbox.synth import count_tokens, reply_text, split_text, truncate_to_tokens

PROVIDER = "anthropic"
OVERLOAD_STATUS = 529
RETRY_AFTER_S = 1
REQUESTS_LIMIT = 4000
TOKENS_LIMIT = 400_000
REQUIRED_FIELDS = ("content", "usage", "stop_reason")
SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "stop_sequences", "stream",
                   "metadata", "service_tier")
"""Messages fields the count_tokens endpoint does not take."""
TOOL_PROMPT_TOKENS = {"auto": 346, "none": 346, "any": 313, "tool": 313}
"""The tool-use system prompt Anthropic adds to a request with ``tools``, by ``tool_choice`` type
(absent: ``auto``), per its tool-use pricing table for current models. Billed as input, and
counted by ``count_tokens``."""

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}


@dataclass(frozen=True, slots=True)
class _Request:
    model: str
    max_tokens: int
    stream: bool
    system: str
    cache_ttl: str | None
    prompt: str
    last_user: str
    tool: dict[str, Any] | None
    tool_prompt: int


async def create_message(request: web.Request) -> web.StreamResponse:
    """``POST /anthropic/v1/messages``: see the module docstring."""
    state = request.app[STATE]
    request_id = f"req_{state.next_id()}"
    if not _api_key(request):
        return _error(401, request_id, state)
    if not request.headers.get("anthropic-version"):
        return _error(400, request_id, state, "anthropic-version: header is required")
    try:
        parsed = _parse(await read_json(request))
    except BodyError as exc:
        return _error(400, request_id, state, str(exc))
    served = served_model(PROVIDER, parsed.model, state.faults.profile)
    if served is None:
        return _error(404, request_id, state, f"model: {parsed.model}")
    tokens = count_tokens(parsed.prompt)
    window = state.faults.profile.too_long(PROVIDER, tokens)
    if window is not None:
        return _error(400, request_id, state, f"prompt is too long: {tokens} tokens > {window} maximum")
    decision = state.faults.decide(PROVIDER)
    await decision.wait()
    status = decision.error_status(OVERLOAD_STATUS)
    if status is not None:
        return _error(status, request_id, state)
    if decision.outcome is Outcome.POLICY_REFUSED:
        return _error(400, request_id, state, "Output blocked by content filtering policy")
    try:
        message = _message(parsed, state, refusal=decision.outcome is Outcome.SAFETY_BLOCKED,
                           off_schema=decision.outcome is Outcome.OFF_SCHEMA)
    except UnsupportedSchemaError as exc:
        return _error(400, request_id, state, f"input_schema: {exc}")
    message["model"] = served
    headers = _rate_headers(request_id, state)
    if decision.outcome is Outcome.MALFORMED and parsed.stream:
        return await malformed_stream(request, _events(message), decision.variant, headers)
    if decision.outcome is Outcome.MALFORMED:
        return malformed_json(message, REQUIRED_FIELDS, decision.variant, headers)
    if parsed.stream:
        return await _stream(request, message, headers)
    return web.json_response(message, headers=headers)


async def count_message_tokens(request: web.Request) -> web.Response:
    """``POST /anthropic/v1/messages/count_tokens``: see the module docstring."""
    state = request.app[STATE]
    request_id = f"req_{state.next_id()}"
    if not _api_key(request):
        return _error(401, request_id, state)
    if not request.headers.get("anthropic-version"):
        return _error(400, request_id, state, "anthropic-version: header is required")
    try:
        parsed = _parse(await read_json(request), counting=True)
    except BodyError as exc:
        return _error(400, request_id, state, str(exc))
    if served_model(PROVIDER, parsed.model, state.faults.profile) is None:
        return _error(404, request_id, state, f"model: {parsed.model}")
    decision = state.faults.decide_count(PROVIDER)
    await decision.wait()
    status = decision.error_status(OVERLOAD_STATUS)
    if status is not None:
        return _error(status, request_id, state)
    return web.json_response({"input_tokens": count_tokens(parsed.prompt) + parsed.tool_prompt},
                             headers={"request-id": request_id})


def _api_key(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else ""
    return request.headers.get("x-api-key", "").strip() or bearer


def _parse(body: Any, *, counting: bool = False) -> _Request:
    """The Messages request ``body`` (``counting``: a count_tokens body, which has no sampling
    fields), checked by :func:`_check`; raises :class:`~opsgate.sandbox.body.BodyError`."""
    _check(body, counting=counting)
    model, messages = body["model"], body["messages"]
    max_tokens = 0 if counting else body["max_tokens"]
    system_blocks = _blocks(body.get("system"))
    texts = [_text(m["content"]) for m in messages]
    users = [_text(m["content"]) for m in messages if m["role"] == "user"]
    tools = body.get("tools") or []
    system = "\n".join(b.get("text", "") for b in system_blocks)
    return _Request(
        model=model,
        max_tokens=max_tokens,
        stream=body.get("stream") is True,
        system=system,
        cache_ttl=_cache_ttl(system_blocks),
        prompt="\n".join(filter(None, [json.dumps(tools) if tools else "", system, *texts])),
        last_user=users[-1] if users else "",
        tool=_forced_tool(tools, body.get("tool_choice")),
        tool_prompt=_tool_prompt(tools, body.get("tool_choice")),
    )


def _tool_prompt(tools: list[Any], choice: Any) -> int:
    """:data:`TOOL_PROMPT_TOKENS` for ``tool_choice`` (checked by :func:`_check`) when ``tools``
    are sent, else 0."""
    if not tools:
        return 0
    return TOOL_PROMPT_TOKENS[choice["type"] if isinstance(choice, dict) else "auto"]


def _check(body: Any, *, counting: bool) -> None:
    """Raise :class:`~opsgate.sandbox.body.BodyError` unless ``body`` has the Messages request
    shape: ``model`` (string), ``max_tokens`` (integer >= 1; a count_tokens body has no sampling
    fields), a non-empty ``messages`` list of ``{"role": "user"|"assistant", "content": string or
    content blocks}``, ``system`` (string or text blocks), ``tools`` (objects with a ``name``),
    ``tool_choice`` (auto, any, tool with ``name``, none) and ``stream`` (boolean)."""
    expect(body, "body", dict)
    if not required(body, "model", "", str):
        raise BodyError("model: String should have at least 1 character")
    extra = [f for f in SAMPLING_FIELDS if f in body] if counting else []
    if extra:
        raise BodyError(f"{extra[0]}: Extra inputs are not permitted")
    if not counting and required(body, "max_tokens", "", int) < 1:
        raise BodyError("max_tokens: Input should be greater than or equal to 1")
    messages = objects(required(body, "messages", "", list), "messages")
    if not messages:
        raise BodyError("messages: at least one message is required")
    for index, message in enumerate(messages):
        path = f"messages.{index}."
        one_of(message.get("role"), f"{path}role", ("user", "assistant"))
        _check_content(required(message, "content", path, str, list), f"{path}content")
    system = optional(body, "system", "", str, list)
    for index, block in enumerate(objects(system, "system") if isinstance(system, list) else []):
        one_of(block.get("type"), f"system.{index}.type", ("text",))
        required(block, "text", f"system.{index}.", str)
        optional(block, "cache_control", f"system.{index}.", dict)
    for index, tool in enumerate(objects(optional(body, "tools", "", list) or [], "tools")):
        required(tool, "name", f"tools.{index}.", str)
        optional(tool, "input_schema", f"tools.{index}.", dict)
    choice = optional(body, "tool_choice", "", dict)
    if choice is not None and one_of(choice.get("type"), "tool_choice.type",
                                     ("auto", "any", "tool", "none")) == "tool":
        required(choice, "name", "tool_choice.", str)
    optional(body, "stream", "", bool)


def _check_content(content: str | list[Any], path: str) -> None:
    """Content blocks: objects with a string ``type``; a text block has a string ``text``, a
    tool_result's ``content`` is a string or content blocks."""
    if isinstance(content, str):
        return
    for index, block in enumerate(objects(content, path)):
        prefix = f"{path}.{index}."
        kind = required(block, "type", prefix, str)
        if kind == "text":
            required(block, "text", prefix, str)
        if kind == "tool_result":
            inner = optional(block, "content", prefix, str, list)
            if inner is not None:
                _check_content(inner, f"{prefix}content")


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def _text(content: Any) -> str:
    parts = []
    for block in _blocks(content):
        inner = block.get("content") if block.get("type") == "tool_result" else None
        parts.append(_text(inner) if inner is not None else str(block.get("text", "")))
    return "\n".join(parts)


def _cache_ttl(system_blocks: list[dict[str, Any]]) -> str | None:
    marks = [b["cache_control"] for b in system_blocks if isinstance(b.get("cache_control"), dict)]
    return str(marks[-1].get("ttl", "5m")) if marks else None


def _forced_tool(tools: list[dict[str, Any]], choice: Any) -> dict[str, Any] | None:
    if not isinstance(choice, dict) or choice.get("type") not in ("tool", "any") or not tools:
        return None
    if choice["type"] == "any":
        return tools[0]
    for tool in tools:
        if tool.get("name") == choice.get("name"):
            return tool
    raise BodyError(f"tool_choice: tool {choice.get('name')!r} is not in tools")


def _message(req: _Request, state: SandboxState, *, refusal: bool, off_schema: bool) -> dict[str, Any]:
    content: list[dict[str, Any]]
    if refusal:
        content, stop_reason, output = [], "refusal", ""
    elif req.tool is not None:
        tool_input = answer_for(req.tool.get("input_schema") or {"type": "object"}, off_schema=off_schema)
        output = json.dumps(tool_input)
        content = [
            {
                "type": "tool_use",
                "id": f"toolu_{state.next_id()}",
                "name": req.tool["name"],
                "input": tool_input,
            }
        ]
        stop_reason = "tool_use"
    else:
        full = reply_text(req.model, req.last_user)
        output = truncate_to_tokens(full, req.max_tokens)
        content = [{"type": "text", "text": output}]
        stop_reason = "end_turn" if output == full else "max_tokens"
    return {
        "id": f"msg_{state.next_id()}",
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": _usage(req, state, count_tokens(output)),
    }


def _usage(req: _Request, state: SandboxState, output_tokens: int) -> dict[str, Any]:
    system_tokens = count_tokens(req.system)
    cached = system_tokens if req.cache_ttl and system_tokens >= CACHE_MIN_TOKENS[PROVIDER] else 0
    hit = cached > 0 and state.cache.seen_before(PROVIDER, req.model, req.system)
    written = 0 if hit else cached
    return {
        "input_tokens": count_tokens(req.prompt) + req.tool_prompt - cached,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached if hit else 0,
        "cache_creation": {
            "ephemeral_5m_input_tokens": 0 if req.cache_ttl == "1h" else written,
            "ephemeral_1h_input_tokens": written if req.cache_ttl == "1h" else 0,
        },
        "service_tier": "standard",
    }


def _events(message: dict[str, Any]) -> list[Event]:
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    events: list[Event] = [("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        opening, *rest = _block_events(index, block)
        events.append(opening)
        if index == 0:  # the real stream pings once, after the first content_block_start
            events.append(("ping", {"type": "ping"}))
        events.extend(rest)
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": delta,
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _block_events(index: int, block: dict[str, Any]) -> list[Event]:
    if block["type"] == "tool_use":
        opening = {**block, "input": {}}
        deltas = [
            {"type": "input_json_delta", "partial_json": p}
            for p in split_text(json.dumps(block["input"]))
        ]
    else:
        opening = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in split_text(block["text"])]
    events: list[Event] = [
        (
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": opening},
        )
    ]
    events += [
        ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
        for d in deltas
    ]
    events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    return events


async def _stream(
    request: web.Request, message: dict[str, Any], headers: dict[str, str]
) -> web.StreamResponse:
    response = await start_sse(request, headers)
    for name, data in _events(message):
        await send_event(response, data, name)
    await response.write_eof()
    return response


def _rate_headers(
    request_id: str, state: SandboxState, *, exhausted: bool = False
) -> dict[str, str]:
    reset = (datetime.now(UTC) + timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    used = state.stats.requests(PROVIDER) % REQUESTS_LIMIT
    return {
        "request-id": request_id,
        "anthropic-ratelimit-requests-limit": str(REQUESTS_LIMIT),
        "anthropic-ratelimit-requests-remaining": "0" if exhausted else str(REQUESTS_LIMIT - used),
        "anthropic-ratelimit-requests-reset": reset,
        "anthropic-ratelimit-tokens-limit": str(TOKENS_LIMIT),
        "anthropic-ratelimit-tokens-remaining": "0" if exhausted else str(TOKENS_LIMIT),
        "anthropic-ratelimit-tokens-reset": reset,
    }


def _error(
    status: int, request_id: str, state: SandboxState, message: str | None = None
) -> web.Response:
    kind, default = _ERRORS.get(status, ("api_error", "Internal server error"))
    headers = _rate_headers(request_id, state, exhausted=status == 429)
    if status == 429:
        headers["retry-after"] = str(RETRY_AFTER_S)
    body = {
        "type": "error",
        "error": {"type": kind, "message": message or default},
        "request_id": request_id,
    }
    return web.json_response(body, status=status, headers=headers)


def add_routes(app: web.Application) -> None:
    """Register the Anthropic routes on ``app``."""
    app.router.add_post("/anthropic/v1/messages", create_message)
    app.router.add_post("/anthropic/v1/messages/count_tokens", count_message_tokens)
