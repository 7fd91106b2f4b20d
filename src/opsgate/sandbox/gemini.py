"""Gemini API sandbox: ``POST {base}/v1beta/models/{model}:generateContent`` and
``:streamGenerateContent`` (``?alt=sse`` for SSE, else one JSON array) with ``base = /gemini``.

Follows the Gemini API reference (ai.google.dev, "Generating content", "Structured output",
"Thinking", "Context caching", "Troubleshooting / API errors"):

- The key comes in the ``x-goog-api-key`` header (``?key=`` is accepted too, as the SDKs may use
  it); a missing key is 403 ``PERMISSION_DENIED``.
- A non-empty ``contents`` list is required; the body is checked against the
  ``GenerateContentRequest`` shape (:func:`_check`, shared with countTokens): any malformed body
  (invalid JSON, an unpaired surrogate, a wrong type or role) is 400 ``INVALID_ARGUMENT``. Field
  names are read in lowerCamelCase or snake_case, as proto3 JSON parsing allows.
- With ``generationConfig.responseMimeType: "application/json"`` the answer text is a JSON
  instance of ``responseSchema`` (OpenAPI subset, upper-case types allowed) or
  ``responseJsonSchema`` (JSON Schema), or ``{}`` without a schema. Otherwise a text answer, cut
  to ``maxOutputTokens`` with ``finishReason: "MAX_TOKENS"``.
- ``generationConfig.thinkingConfig`` with a non-zero ``thinkingBudget`` or ``includeThoughts``
  adds ``thoughtsTokenCount`` (and, with ``includeThoughts``, a ``thought: true`` part).
- Usage: ``promptTokenCount`` over system instruction and contents (see
  :mod:`opsgate.sandbox.synth`); from the second sighting of a system instruction of at least 1,024
  tokens its tokens are ``cachedContentTokenCount`` (implicit caching; included in the prompt
  count); ``totalTokenCount`` = prompt + candidates + thoughts.
- Errors: ``{"error": {"code", "message", "status", "details"}}``; 429 ``RESOURCE_EXHAUSTED``
  carries a ``google.rpc.RetryInfo`` detail (``retryDelay: "2s"``) and "Please retry in 2.0s."
  in the message, and no ``Retry-After`` header, as the real API.
- ``POST {base}/v1beta/models/{model}:countTokens`` (Gemini "Counting tokens"): a body with
  ``contents`` or with ``generateContentRequest`` (a whole request: system instruction, contents,
  generation config), not both; answers ``{"totalTokens": N, "promptTokensDetails": [...]}``,
  N the ``promptTokenCount`` generateContent reports for the same request. Faults:
  :meth:`~opsgate.sandbox.faults.FaultState.decide_count`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from opsgate.sandbox.body import BodyError, expect, objects, one_of, optional, read_json
from opsgate.sandbox.faults import Outcome
from opsgate.sandbox.instance import UnsupportedSchemaError, answer_for
from opsgate.sandbox.malformed import Event, malformed_json, malformed_stream
from opsgate.sandbox.models import served_model
from opsgate.sandbox.sse import send_event, start_sse
from opsgate.sandbox.state import CACHE_MIN_TOKENS, STATE, SandboxState
from opsgate.sandbox.synth import count_tokens, reply_text, split_text, truncate_to_tokens

PROVIDER = "gemini"
OVERLOAD_STATUS = 503
RETRY_DELAY_S = 2
REQUIRED_FIELDS = ("candidates", "usageMetadata")
_ACTIONS = ("generateContent", "streamGenerateContent")
_COUNT = "countTokens"
_RPC = "type.googleapis.com/google.rpc."

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    403: (
        "PERMISSION_DENIED",
        (
            "Method doesn't allow unregistered callers (callers without established identity)."
            " Please use API Key or other form of API consumer identity."
        ),
    ),
    404: ("NOT_FOUND", "models/unknown is not found for API version v1beta."),
    429: (
        "RESOURCE_EXHAUSTED",
        (
            "You exceeded your current quota, please check your plan and billing details."
            f" Please retry in {RETRY_DELAY_S:.1f}s."
        ),
    ),
    500: (
        "INTERNAL",
        (
            "An internal error has occurred. Please retry or report in"
            " https://developers.generativeai.google/guide/troubleshooting"
        ),
    ),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "The request timed out. Please try again."),
}


@dataclass(frozen=True, slots=True)
class _Request:
    model: str
    stream: bool
    system: str
    prompt: str
    last_user: str
    json_mode: bool
    schema: dict[str, Any] | None
    max_tokens: int | None
    thinking_budget: int | None
    include_thoughts: bool


async def generate_content(request: web.Request) -> web.StreamResponse:
    """``POST /gemini/{version}/models/{model}:{generateContent|streamGenerateContent}``."""
    state = request.app[STATE]
    model, _, action = request.match_info["target"].partition(":")
    if action == _COUNT:
        return await count_tokens_for(request, model)
    if action not in _ACTIONS:
        return _error(404, f"Method {action!r} is not found.")
    if not (request.headers.get("x-goog-api-key") or request.query.get("key")):
        return _error(403)
    try:
        parsed = _parse(model, action, await read_json(request))
    except BodyError as exc:
        return _error(400, f"Invalid JSON payload: {exc}")
    served = served_model(PROVIDER, parsed.model, state.faults.profile)
    if served is None:
        return _error(404, f"models/{parsed.model} is not found for API version v1beta, or is not "
                           "supported for generateContent.")
    tokens = count_tokens(parsed.prompt)
    window = state.faults.profile.too_long(PROVIDER, tokens)
    if window is not None:
        return _error(400, f"The input token count ({tokens}) exceeds the maximum number of tokens "
                           f"allowed ({window}).")
    decision = state.faults.decide(PROVIDER)
    await decision.wait()
    status = decision.error_status(OVERLOAD_STATUS)
    if status is not None:
        return _error(status)
    if decision.outcome is Outcome.POLICY_REFUSED:
        return web.json_response(_blocked_answer(parsed, state, served))
    try:
        answer = _answer(parsed, state, blocked=decision.outcome is Outcome.SAFETY_BLOCKED,
                         off_schema=decision.outcome is Outcome.OFF_SCHEMA)
        answer["modelVersion"] = served
    except UnsupportedSchemaError as exc:
        return _error(400, f"Invalid JSON payload: response schema: {exc}")
    sse = request.query.get("alt") == "sse"
    if decision.outcome is Outcome.MALFORMED and parsed.stream and sse:
        return await malformed_stream(request, _chunks(answer), decision.variant, {})
    if decision.outcome is Outcome.MALFORMED:
        return malformed_json(answer, REQUIRED_FIELDS, decision.variant, {})
    if parsed.stream and sse:
        return await _stream(request, answer)
    if parsed.stream:
        return web.json_response([data for _, data in _chunks(answer)])
    return web.json_response(answer)


async def count_tokens_for(request: web.Request, model: str) -> web.Response:
    """``POST /gemini/{version}/models/{model}:countTokens``: see the module docstring."""
    state = request.app[STATE]
    if not (request.headers.get("x-goog-api-key") or request.query.get("key")):
        return _error(403)
    try:
        parsed = _parse(model, _COUNT, _counted_request(await read_json(request)))
    except BodyError as exc:
        return _error(400, f"Invalid JSON payload: {exc}")
    if served_model(PROVIDER, model, state.faults.profile) is None:
        return _error(404, f"models/{model} is not found for API version v1beta, or is not "
                           "supported for countTokens.")
    decision = state.faults.decide_count(PROVIDER)
    await decision.wait()
    status = decision.error_status(OVERLOAD_STATUS)
    if status is not None:
        return _error(status)
    tokens = count_tokens(parsed.prompt)
    return web.json_response(
        {"totalTokens": tokens, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": tokens}]}
    )


def _counted_request(body: Any) -> Any:
    """The generateContent request a countTokens ``body`` counts: its ``generateContentRequest``,
    or its ``contents`` alone (the two are mutually exclusive)."""
    expect(body, "body", dict)
    whole = _field(body, "generateContentRequest")
    if whole is not None and "contents" in body:
        raise BodyError("contents and generateContentRequest are mutually exclusive")
    return whole if whole is not None else {"contents": body.get("contents")}


def _parse(model: str, action: str, body: Any) -> _Request:
    """The generateContent request ``body``, checked by :func:`_check`; raises
    :class:`~opsgate.sandbox.body.BodyError`."""
    _check(body)
    contents = body["contents"]
    config = _field(body, "generationConfig") or {}
    thinking = _field(config, "thinkingConfig") or {}
    system = _text(_field(body, "systemInstruction"))
    texts = [_text(c) for c in contents]
    users = [_text(c) for c in contents if c.get("role", "user") == "user"]
    return _Request(
        model=model,
        stream=action == "streamGenerateContent",
        system=system,
        prompt="\n".join(filter(None, [system, *texts])),
        last_user=users[-1] if users else "",
        json_mode=_field(config, "responseMimeType") == "application/json",
        schema=_field(config, "responseJsonSchema")
        or _camel_schema(_field(config, "responseSchema")),
        max_tokens=_field(config, "maxOutputTokens"),
        thinking_budget=_field(thinking, "thinkingBudget"),
        include_thoughts=bool(_field(thinking, "includeThoughts")),
    )


def _check(body: Any) -> None:
    """Raise :class:`~opsgate.sandbox.body.BodyError` unless ``body`` has the
    ``GenerateContentRequest`` shape: a non-empty ``contents`` list of ``Content`` objects,
    ``systemInstruction`` a ``Content``, ``generationConfig`` an object whose
    ``responseMimeType`` is a string, ``maxOutputTokens`` an integer and ``thinkingConfig`` an
    object with an integer ``thinkingBudget`` and a boolean ``includeThoughts``."""
    expect(body, "body", dict)
    contents = objects(_field(body, "contents"), "contents") if "contents" in body else []
    if not contents:
        raise BodyError("* GenerateContentRequest.contents: contents is not specified")
    for index, content in enumerate(contents):
        _check_content(content, f"contents[{index}]")
    system = _field(body, "systemInstruction")
    if system is not None:
        _check_content(expect(system, "system_instruction", dict), "system_instruction")
    config = _message(body, "generationConfig")
    _check_fields(config, "generation_config", responseMimeType=str, maxOutputTokens=int)
    thinking = _message(config, "thinkingConfig")
    _check_fields(thinking, "thinking_config", thinkingBudget=int, includeThoughts=bool)


def _message(parent: dict[str, Any], camel: str) -> dict[str, Any]:
    """The sub-message ``parent[camel]`` (either spelling), ``{}`` when absent or null; any other
    non-object value raises :class:`~opsgate.sandbox.body.BodyError`."""
    value = _field(parent, camel)
    return {} if value is None else expect(value, camel, dict)


def _check_fields(message: dict[str, Any], path: str, **kinds: type) -> None:
    """Each field named in ``kinds`` (either spelling, see :func:`_field`) is absent or of its
    type."""
    for name, kind in kinds.items():
        value = _field(message, name)
        if value is not None:
            expect(value, f"{path}.{name}", kind)


def _check_content(content: dict[str, Any], path: str) -> None:
    """A ``Content``: ``role`` (optional) "user" or "model", a non-empty ``parts`` list of
    objects whose ``text``, when present, is a string."""
    if content.get("role") is not None:
        one_of(content["role"], f"{path}.role", ("user", "model"))
    parts = objects(content.get("parts"), f"{path}.parts")
    if not parts:
        raise BodyError(f"{path}.parts: must not be empty")
    for index, part in enumerate(parts):
        optional(part, "text", f"{path}.parts[{index}].", str)


def _field(message: dict[str, Any], camel: str) -> Any:
    """``message[camel]``, or its snake_case spelling: proto3 JSON accepts both (the
    google-genai SDK sends ``thinkingConfig.thinking_budget``)."""
    if camel in message:
        return message[camel]
    return message.get(re.sub(r"(?<!^)([A-Z])", r"_\1", camel).lower())


def _camel_schema(schema: Any) -> Any:
    """A ``responseSchema`` (the proto ``Schema`` message) with its keys in lowerCamelCase: the
    google-genai SDK sends ``min_items``, ``any_of``, ... Property names are kept as they are."""
    if not isinstance(schema, dict):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        name = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)
        if name == "properties" and isinstance(value, dict):
            result[name] = {prop: _camel_schema(sub) for prop, sub in value.items()}
        elif name == "anyOf" and isinstance(value, list):
            result[name] = [_camel_schema(sub) for sub in value]
        elif name == "items":
            result[name] = _camel_schema(value)
        else:
            result[name] = value
    return result


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = content.get("parts") if isinstance(content, dict) else None
    return "\n".join(str(p.get("text", "")) for p in parts or [] if isinstance(p, dict))


def _answer(req: _Request, state: SandboxState, *, blocked: bool, off_schema: bool) -> dict[str, Any]:
    ids = {"modelVersion": req.model, "responseId": state.next_id()}
    prompt_tokens = count_tokens(req.prompt)
    if blocked:
        ratings = [
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}
        ]
        usage = {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens}
        return {
            "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": ratings},
            "usageMetadata": usage,
            **ids,
        }
    if req.json_mode:
        text, finish = json.dumps(answer_for(req.schema or {"type": "object"}, off_schema=off_schema)), "STOP"
    else:
        full = reply_text(req.model, req.last_user)
        text = truncate_to_tokens(full, req.max_tokens) if req.max_tokens else full
        finish = "STOP" if text == full else "MAX_TOKENS"
    thought = _thought(req)
    parts = [{"text": thought, "thought": True}] if thought and req.include_thoughts else []
    candidate = {
        "content": {"parts": [*parts, {"text": text}], "role": "model"},
        "finishReason": finish,
        "index": 0,
    }
    return {
        "candidates": [candidate],
        "usageMetadata": _usage(
            req, state, prompt_tokens, count_tokens(text), count_tokens(thought)
        ),
        **ids,
    }


def _blocked_answer(req: _Request, state: SandboxState, served: str) -> dict[str, Any]:
    """A blocked answer: one candidate with ``finishReason: "SAFETY"``, its safety ratings and no
    ``content`` (what generateContent returns when the output trips a safety filter)."""
    prompt_tokens = count_tokens(req.prompt)
    ratings = [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": True}]
    return {
        "candidates": [{"finishReason": "SAFETY", "index": 0, "safetyRatings": ratings}],
        "usageMetadata": {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens},
        "modelVersion": served,
        "responseId": state.next_id(),
    }


def _thought(req: _Request) -> str:
    thinking = req.include_thoughts or (
        req.thinking_budget is not None and req.thinking_budget != 0
    )
    return f"Thinking about how {req.model} should answer this request." if thinking else ""


def _usage(
    req: _Request, state: SandboxState, prompt: int, output: int, thoughts: int
) -> dict[str, Any]:
    system_tokens = count_tokens(req.system)
    cached = 0
    if system_tokens >= CACHE_MIN_TOKENS[PROVIDER] and state.cache.seen_before(
        PROVIDER, req.model, req.system
    ):
        cached = system_tokens
    usage: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": output,
        "totalTokenCount": prompt + output + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if cached:
        usage["cachedContentTokenCount"] = cached
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def _chunks(answer: dict[str, Any]) -> list[Event]:
    """The answer as streamed chunks: one per text piece; the last has finishReason and usage."""
    if "candidates" not in answer:
        return [(None, answer)]
    ids = {"modelVersion": answer["modelVersion"], "responseId": answer["responseId"]}
    candidate = answer["candidates"][0]
    usage = answer["usageMetadata"]
    partial_usage = {
        "promptTokenCount": usage["promptTokenCount"],
        "totalTokenCount": usage["promptTokenCount"],
    }
    pieces = [[p] for p in candidate["content"]["parts"] if p.get("thought")]
    text = "".join(p["text"] for p in candidate["content"]["parts"] if not p.get("thought"))
    pieces += [[{"text": t}] for t in split_text(text) or [""]]
    events: list[Event] = []
    for number, parts in enumerate(pieces, start=1):
        last = number == len(pieces)
        chunk = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if last:
            chunk["finishReason"] = candidate["finishReason"]
        events.append(
            (
                None,
                {"candidates": [chunk], "usageMetadata": usage if last else partial_usage, **ids},
            )
        )
    return events


async def _stream(request: web.Request, answer: dict[str, Any]) -> web.StreamResponse:
    response = await start_sse(request)
    for _, data in _chunks(answer):
        await send_event(response, data)
    await response.write_eof()
    return response


def _error(status: int, message: str | None = None) -> web.Response:
    code, default = _ERRORS.get(status, ("INTERNAL", _ERRORS[500][1]))
    details: list[dict[str, Any]] = []
    if status == 429:
        details = [
            {
                "@type": _RPC + "QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    }
                ],
            },
            {
                "@type": _RPC + "Help",
                "links": [
                    {
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                    }
                ],
            },
            {"@type": _RPC + "RetryInfo", "retryDelay": f"{RETRY_DELAY_S}s"},
        ]
    elif status == 400:
        details = [{"@type": _RPC + "BadRequest", "fieldViolations": []}]
    body = {
        "error": {"code": status, "message": message or default, "status": code, "details": details}
    }
    return web.json_response(body, status=status)


def add_routes(app: web.Application) -> None:
    """Register the Gemini routes on ``app`` (API versions v1beta and v1)."""
    for version in ("v1beta", "v1"):
        app.router.add_post(f"/gemini/{version}/models/{{target}}", generate_content)
