"""OpenAI-compatible Chat Completions adapter (``POST {base}/chat/completions``, non-streaming).

Serves DeepSeek (base ``https://api.deepseek.com``, JSON mode ``json_object``) and any endpoint
that speaks the OpenAI Chat Completions format (vLLM, Ollama, ...; JSON mode ``json_schema``).
Wire format: OpenAI API reference "Chat Completions" and DeepSeek API docs ("Create Chat
Completion", "JSON Output", "Context Caching", "Error Codes").
"""

from __future__ import annotations

import re
from typing import Any, Literal

import aiohttp
import orjson

from opsgate.clock import Clock, SystemClock
from opsgate.providers.base import Completion, CompletionRequest, FinishReason, Usage
from opsgate.providers.errors import (
    AuthenticationFailed,
    BillingFailed,
    ContentFiltered,
    ContextLengthExceeded,
    EmptyAnswer,
    InvalidRequest,
    MalformedResponse,
    ModelUnavailable,
    Overloaded,
    ProviderError,
    RateLimited,
    ServerError,
    SpendCapReached,
    require_complete,
)
from opsgate.providers.http import (
    HttpReply,
    answer_object,
    as_object,
    check_base_url,
    decode_object,
    error_body,
    error_class,
    error_detail,
    optional_str,
    optional_token_count,
    post_json,
    rejected,
    reported_model,
    reported_usage,
    require_key,
    retry_after_seconds,
    token_count,
    unwrap_answer,
)

DEEPSEEK_BASE_URL = "https://api.deepseek.com"

JsonMode = Literal["json_schema", "json_object"]
Thinking = Literal["enabled", "disabled"]

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_USE,
    "function_call": FinishReason.TOOL_USE,
}
_STATUS_ERRORS: dict[int, type[ProviderError]] = {
    400: InvalidRequest,
    404: ModelUnavailable,
    422: InvalidRequest,
    401: AuthenticationFailed,
    403: AuthenticationFailed,
    402: BillingFailed,
    429: RateLimited,
    500: ServerError,
    502: ServerError,
    504: ServerError,
    503: Overloaded,
}


_ACCOUNT_CODES: dict[str, type[ProviderError]] = {
    "billing_hard_limit_reached": SpendCapReached,
    "insufficient_quota": SpendCapReached,
}
"""Error codes (``code`` or ``type``) that refuse the account, not the request, whatever the
status: OpenAI's 400 ``billing_hard_limit_reached`` ("Billing hard limit has been reached", the
organisation's monthly budget) and 429 ``insufficient_quota`` ("You exceeded your current quota,
please check your plan and billing details": credit or quota used up, which no wait clears, unlike
a 429 ``rate_limit_exceeded``). Never retried; the next target is tried."""
_POLICY_CODES = frozenset({"content_filter", "content_policy_violation", "ResponsibleAIPolicyViolation"})
_CONTEXT_CODES = frozenset({"context_length_exceeded"})
_POLICY_MESSAGE = re.compile(r"content exists risk|content management policy|content policy", re.I)
_CONTEXT_MESSAGE = re.compile(r"maximum context length|context length exceeded", re.I)
"""Content-policy and context-length signals of a 400/422 body (see :func:`rejection`)."""


class OpenAICompatProvider:
    """Calls an OpenAI-compatible Chat Completions endpoint over the shared aiohttp session.

    ``json_mode`` says how a schema is requested: ``"json_schema"`` sends
    ``response_format: {"type": "json_schema", "json_schema": {"name", "schema", "strict": true}}``;
    ``"json_object"`` (DeepSeek) sends ``{"type": "json_object"}`` and appends the schema to the
    system prompt, which then names JSON as DeepSeek requires. Either way ``Completion.data`` is
    the parsed object, not yet validated against the schema. ``api_key`` may be ``None``: calls
    then raise :class:`AuthenticationFailed` ("<key_env> is not set") without a network call, or,
    with ``key_required=False`` (a local endpoint configured without a key), go out without an
    ``Authorization`` header. ``thinking`` sends DeepSeek's thinking switch
    (``{"thinking": {"type": ...}}``, DeepSeek API docs "Thinking Mode": V4 models think by
    default); ``None`` sends nothing (endpoints that do not know the field).
    """

    def __init__(
        self,
        name: str,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: str | None,
        *,
        json_mode: JsonMode = "json_schema",
        key_env: str | None = None,
        key_required: bool = True,
        thinking: Thinking | None = None,
        clock: Clock | None = None,
    ) -> None:
        if json_mode not in ("json_schema", "json_object"):
            raise ValueError(f"json_mode must be 'json_schema' or 'json_object', not {json_mode!r}")
        self.name = name
        self._session = session
        self._url = f"{check_base_url(base_url)}/chat/completions"
        self._api_key = api_key
        self._key_env = key_env or f"{name.upper().replace('-', '_')}_API_KEY"
        self._json_mode = json_mode
        self._key_required = key_required
        self._thinking = thinking
        self._clock = clock or SystemClock()

    async def complete(
        self, request: CompletionRequest, model: str, timeout_s: float
    ) -> Completion:
        """One Chat Completions call. Raises the :mod:`opsgate.providers.errors` class for the
        status, :class:`ContentFiltered` (``content_filter``), :class:`Overloaded` (DeepSeek
        ``insufficient_system_resource``), :class:`IncompleteAnswer` (``length``),
        :class:`EmptyAnswer` (no choice or empty content) or :class:`MalformedResponse` (bad body,
        or content that is not a JSON object when asked, once the two wrappers
        :func:`~opsgate.providers.http.unwrap_answer` removes are gone)."""
        headers = {}
        if self._key_required or self._api_key:
            key = require_key(self.name, self._api_key, self._key_env)
            headers["Authorization"] = f"Bearer {key}"
        payload = chat_payload(request, model, self._json_mode)
        if self._thinking is not None:
            payload["thinking"] = {"type": self._thinking}
        reply = await post_json(
            self._session,
            self.name,
            self._url,
            headers=headers,
            payload=payload,
            timeout_s=timeout_s,
        )
        if reply.status != 200:
            raise self._error(reply)
        try:
            return self._completion(request, model, reply)
        except ProviderError as exc:  # an unusable 200 is still billed for what it reported
            exc.usage = reported_usage(reply.body, "usage", self._usage)
            exc.served_model = reported_model(reply.body, "model")
            raise

    def _completion(self, request: CompletionRequest, model: str, reply: HttpReply) -> Completion:
        body = decode_object(self.name, reply.body)
        request_id = reply.headers.get("x-request-id") or optional_str(body.get("id"))
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise EmptyAnswer(
                self.name,
                "no choices in the answer",
                http_status=200,
                provider_request_id=request_id,
            )
        raw_finish = optional_str(choices[0].get("finish_reason"))
        message = choices[0].get("message")
        self._raise_for_finish(raw_finish, message, request_id)
        finish = _FINISH_REASONS.get(raw_finish or "", FinishReason.UNKNOWN)
        require_complete(self.name, finish, raw_finish, request_id)
        usage = self._usage(body.get("usage"))
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str) or not content.strip():
            raise EmptyAnswer(
                self.name,
                "no content in the answer",
                http_status=200,
                provider_request_id=request_id,
            )
        if request.json_schema is not None:
            content = unwrap_answer(content)
            data = answer_object(self.name, content, request_id)
        else:
            data = None
        return Completion(
            provider=self.name,
            model=model,
            served_model=optional_str(body.get("model")),
            text=content,
            data=data,
            usage=usage,
            finish_reason=finish,
            raw_finish_reason=raw_finish,
            provider_request_id=request_id,
            provider_latency_ms=reply.latency_ms,
        )

    def _raise_for_finish(self, raw_finish: str | None, message: Any, request_id: str | None) -> None:
        if raw_finish == "content_filter":
            raise ContentFiltered(
                self.name,
                "the answer was filtered (content_filter)",
                http_status=200,
                provider_request_id=request_id,
            )
        if isinstance(message, dict) and optional_str(message.get("refusal")):
            raise ContentFiltered(
                self.name,
                "the model refused (refusal)",
                http_status=200,
                provider_request_id=request_id,
            )
        if raw_finish == "insufficient_system_resource":
            raise Overloaded(
                self.name,
                "generation stopped (insufficient_system_resource)",
                http_status=200,
                provider_request_id=request_id,
            )

    def _usage(self, usage: Any) -> Usage:
        """``usage`` as :class:`Usage`: ``completion_tokens`` as output (reasoning inside it,
        ``completion_tokens_details.reasoning_tokens``), ``prompt_tokens`` split into cache reads
        and uncached input. The split is DeepSeek's ``prompt_cache_hit_tokens`` /
        ``prompt_cache_miss_tokens`` (hit + miss = prompt) when either is present, a missing one
        derived from ``prompt_tokens``; else OpenAI's ``prompt_tokens_details.cached_tokens``
        (absent: nothing cached). Uncached input is never less than ``prompt_tokens`` minus the
        cache reads. Raises :class:`MalformedResponse` without ``prompt_tokens`` or
        ``completion_tokens``, or when the cache reads exceed ``prompt_tokens``."""
        if not isinstance(usage, dict):
            raise MalformedResponse(self.name, "usage is missing", http_status=200)
        prompt = token_count(self.name, usage, "prompt_tokens", required=True)
        details = usage.get("completion_tokens_details")
        reasoning = (
            token_count(self.name, details, "reasoning_tokens") if isinstance(details, dict) else 0
        )
        hit = optional_token_count(self.name, usage, "prompt_cache_hit_tokens")
        miss = optional_token_count(self.name, usage, "prompt_cache_miss_tokens")
        if hit is None and miss is None:
            prompt_details = usage.get("prompt_tokens_details")
            hit = (
                token_count(self.name, prompt_details, "cached_tokens")
                if isinstance(prompt_details, dict)
                else 0
            )
        cached = hit if hit is not None else max(prompt - (miss or 0), 0)
        if cached > prompt:
            raise MalformedResponse(
                self.name, "cached tokens exceed prompt tokens", http_status=200
            )
        return Usage(
            input_tokens=max(prompt - cached, miss or 0),
            cache_read_tokens=cached,
            output_tokens=token_count(self.name, usage, "completion_tokens", required=True),
            reasoning_tokens=reasoning,
        )

    def _error(self, reply: HttpReply) -> ProviderError:
        body = error_body(reply.body)
        error = as_object(body.get("error"))
        request_id = reply.headers.get("x-request-id")
        detail = error_detail(reply.status, error.get("type") or error.get("code"))
        cls = error_class(_STATUS_ERRORS, reply.status)
        account = next((_ACCOUNT_CODES[c] for c in _codes(error) if c in _ACCOUNT_CODES), None)
        if account is not None:
            cls, detail = rejected(account, detail)
        elif "model_not_found" in (error.get("code"), error.get("type")):
            cls = ModelUnavailable
        elif cls is InvalidRequest and (refusal := rejection(error)) is not None:
            cls, detail = rejected(refusal, detail)
        retry_after = (
            retry_after_seconds(reply.headers, self._clock.now()) if cls is RateLimited else None
        )
        return cls(
            self.name,
            detail,
            http_status=reply.status,
            retry_after=retry_after,
            provider_request_id=request_id,
        )


def rejection(error: dict[str, Any]) -> type[ProviderError] | None:
    """The typed refusal a 400/422 ``error`` object carries, or ``None``: a content-policy refusal (:class:`ContentFiltered`: ``code`` ``content_filter`` /
    ``content_policy_violation``, Azure's ``innererror.code`` ``ResponsibleAIPolicyViolation``,
    DeepSeek's message "Content Exists Risk") or a prompt beyond the context window
    (:class:`ContextLengthExceeded`: ``code`` ``context_length_exceeded``, or the "This model's
    maximum context length is N tokens" message of OpenAI, DeepSeek and vLLM). The provider's
    message is only matched, never echoed."""
    codes = _codes(error)
    message = optional_str(error.get("message")) or ""
    if codes & _POLICY_CODES or _POLICY_MESSAGE.search(message):
        return ContentFiltered
    if codes & _CONTEXT_CODES or _CONTEXT_MESSAGE.search(message):
        return ContextLengthExceeded
    return None


def _codes(error: dict[str, Any]) -> set[str]:
    """The string ``code``, ``type`` and Azure ``innererror.code`` of an ``error`` object."""
    inner = as_object(error.get("innererror"))
    values = (error.get("code"), error.get("type"), inner.get("code"))
    return {c for c in values if isinstance(c, str)}


def chat_payload(request: CompletionRequest, model: str, json_mode: JsonMode) -> dict[str, Any]:
    """The Chat Completions request body: system and user messages, ``max_tokens``,
    ``temperature``, ``stream: false`` and, for a schema, ``response_format`` per ``json_mode``."""
    system = request.system
    payload: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "stream": False,
    }
    if request.json_schema is not None and json_mode == "json_object":
        system = _with_schema_instructions(system, request.json_schema)
        payload["response_format"] = {"type": "json_object"}
    elif request.json_schema is not None:
        payload["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": request.schema_name,
                "schema": request.json_schema,
                "strict": True,
            },
        }
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": request.user})
    payload["messages"] = messages
    return payload


def _with_schema_instructions(system: str, schema: dict[str, Any]) -> str:
    shape = orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode()
    instructions = (
        "Answer with one JSON object only: no prose, no Markdown code fences. "
        f"The JSON object must conform to this JSON Schema:\n```json\n{shape}\n```"
    )
    return f"{system}\n\n{instructions}" if system else instructions
