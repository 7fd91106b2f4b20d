"""Anthropic Messages API adapter (``POST {base}/v1/messages``, non-streaming), and its token
count (``POST {base}/v1/messages/count_tokens``).

Wire format: Anthropic API reference "Messages" (anthropic-version ``2023-06-01``), "Count
Message tokens", "Errors" and "Rate limits". A JSON answer is requested as one tool whose ``input_schema`` is the operation's
schema, forced with ``tool_choice: {"type": "tool", "name": <schema_name>}``; the answer is that
``tool_use`` block's ``input``.
"""

from __future__ import annotations

import re

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import aiohttp
import orjson

from opsgate.clock import Clock, SystemClock
from opsgate.providers.base import Completion, CompletionRequest, FinishReason, InputCount, Usage
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
    as_object,
    check_base_url,
    decode_object,
    error_body,
    error_class,
    error_detail,
    optional_str,
    post_json,
    rejected,
    reported_model,
    reported_usage,
    require_key,
    retry_after_seconds,
    token_count,
)

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"

_STOP_REASONS = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_USE,
    "pause_turn": FinishReason.PAUSE,
    "model_context_window_exceeded": FinishReason.CONTEXT_EXCEEDED,
}
_STATUS_ERRORS: dict[int, type[ProviderError]] = {
    400: InvalidRequest,
    404: ModelUnavailable,
    413: InvalidRequest,
    401: AuthenticationFailed,
    403: AuthenticationFailed,
    402: BillingFailed,
    500: ServerError,
    504: ServerError,
    503: Overloaded,
    529: Overloaded,
}
_MESSAGE_CLASSES: tuple[tuple[re.Pattern[str], type[ProviderError]], ...] = (
    (re.compile(r"content filtering policy", re.I), ContentFiltered),
    (re.compile(r"prompt is too long|exceed context limit", re.I), ContextLengthExceeded),
    (re.compile(r"credit balance is too low", re.I), BillingFailed),
    (re.compile(r"reached your specified API usage limits", re.I), SpendCapReached),
    (re.compile(r"organization has been disabled", re.I), AuthenticationFailed),
)
"""What an Anthropic 400 ``invalid_request_error`` means when its message says more than "bad
request"; the type is the same for all of them, so only the message tells (first match wins):
a content-policy block ("Output blocked by content filtering policy"), a prompt beyond the window
("prompt is too long: 208656 tokens > 200000 maximum", "input length and `max_tokens` exceed
context limit: ..."), and three account-level failures that another provider does not share:
"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to
upgrade or purchase credits.", "You have reached your specified API usage limits. You will
regain access on 2026-04-01 at 00:00 UTC." (the console's spend limit) and "This organization
has been disabled." (bodies as reported in anthropics/claude-code issues #4208, #38035,
#72457)."""
_RATE_LIMIT_BUCKETS = ("requests", "tokens", "input-tokens", "output-tokens")
_COUNT_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking")
"""The Messages fields count_tokens takes (no ``max_tokens``, ``temperature``, ...)."""
class AnthropicProvider:
    """Calls Claude models through the Messages API over the shared aiohttp session.

    ``api_key`` may be ``None``: every call then raises :class:`AuthenticationFailed`
    ("ANTHROPIC_API_KEY is not set") without touching the network. ``base_url`` is checked with
    :func:`opsgate.providers.http.check_base_url` (``ValueError`` on a bad one). ``clock`` turns
    ``anthropic-ratelimit-*-reset`` timestamps into waits.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_key: str | None,
        *,
        base_url: str = ANTHROPIC_BASE_URL,
        name: str = "anthropic",
        key_env: str = "ANTHROPIC_API_KEY",
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self._session = session
        self._api_key = api_key
        self._key_env = key_env
        self._url = f"{check_base_url(base_url)}/v1/messages"
        self._count_url = f"{self._url}/count_tokens"
        self._clock = clock or SystemClock()

    async def complete(
        self, request: CompletionRequest, model: str, timeout_s: float
    ) -> Completion:
        """One Messages call. Returns the normalised :class:`Completion`; raises the
        :mod:`opsgate.providers.errors` class for the status (see module tables), a refusal
        (:class:`ContentFiltered`), an answer cut off or paused (:class:`IncompleteAnswer`:
        ``stop_reason`` ``max_tokens``, ``model_context_window_exceeded``, ``pause_turn``), no
        text/tool input (:class:`EmptyAnswer`) or a body that is not the documented shape
        (:class:`MalformedResponse`)."""
        key = require_key(self.name, self._api_key, self._key_env)
        headers = {"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION}
        reply = await post_json(
            self._session,
            self.name,
            self._url,
            headers=headers,
            payload=messages_payload(request, model),
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

    async def count_tokens(
        self, request: CompletionRequest, model: str, timeout_s: float
    ) -> InputCount:
        """The input tokens of ``request`` to ``model`` from ``count_tokens`` (free; same system
        prompt, messages, tool and tool_choice as :meth:`complete` sends, see
        :func:`count_payload`). The count already holds the tool-use system prompt Anthropic adds
        to a request with a tool (the token counting guide's one-tool example counts 403 tokens
        for a short tool and a one-line question, the 346-token prompt included; "Tool use
        pricing and tokens" bills the same prompt as input), and may hold system tokens that are
        not billed ("Token counting": "Billing reflects only your content"): nothing is added. Raises
        the :mod:`opsgate.providers.errors` class for an error status, a timeout or a transport
        failure, and :class:`MalformedResponse` for a body without ``input_tokens``."""
        key = require_key(self.name, self._api_key, self._key_env)
        reply = await post_json(
            self._session,
            self.name,
            self._count_url,
            headers={"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION},
            payload=count_payload(request, model),
            timeout_s=timeout_s,
        )
        if reply.status != 200:
            raise self._error(reply)
        tokens = token_count(self.name, decode_object(self.name, reply.body), "input_tokens",
                             required=True)
        return InputCount(tokens)

    def _completion(self, request: CompletionRequest, model: str, reply: HttpReply) -> Completion:
        body = decode_object(self.name, reply.body)
        request_id = reply.headers.get("request-id")
        raw_stop = optional_str(body.get("stop_reason"))
        if raw_stop == "refusal":
            raise ContentFiltered(
                self.name,
                "the model refused (refusal)",
                http_status=200,
                provider_request_id=request_id,
            )
        finish = _STOP_REASONS.get(raw_stop or "", FinishReason.UNKNOWN)
        require_complete(self.name, finish, raw_stop, request_id)
        usage = self._usage(body.get("usage"))
        content = body.get("content")
        if not isinstance(content, list):
            raise MalformedResponse(self.name, "content is missing", http_status=200)
        if request.json_schema is not None:
            data = self._tool_input(content, request.schema_name, request_id)
            text = orjson.dumps(data).decode()
        else:
            data = None
            text = self._text(content, request_id)
        return Completion(
            provider=self.name,
            model=model,
            served_model=optional_str(body.get("model")),
            text=text,
            data=data,
            usage=usage,
            finish_reason=finish,
            raw_finish_reason=raw_stop,
            provider_request_id=request_id,
            provider_latency_ms=reply.latency_ms,
        )

    def _usage(self, usage: Any) -> Usage:
        """``usage`` as :class:`Usage`. Cache writes: the ``cache_creation`` breakdown
        (``ephemeral_5m``/``ephemeral_1h_input_tokens``); what the top-level
        ``cache_creation_input_tokens`` counts beyond it (no breakdown, or a partial or stale one
        from a proxy) is billed as 5-minute writes, the documented default TTL, never as 0.
        Raises :class:`MalformedResponse` without ``input_tokens`` or ``output_tokens``."""
        if not isinstance(usage, dict):
            raise MalformedResponse(self.name, "usage is missing", http_status=200)
        written = token_count(self.name, usage, "cache_creation_input_tokens")
        split = usage.get("cache_creation")
        split = split if isinstance(split, dict) else {}
        write_5m = token_count(self.name, split, "ephemeral_5m_input_tokens")
        write_1h = token_count(self.name, split, "ephemeral_1h_input_tokens")
        write_5m += max(written - write_5m - write_1h, 0)
        return Usage(
            input_tokens=token_count(self.name, usage, "input_tokens", required=True),
            output_tokens=token_count(self.name, usage, "output_tokens", required=True),
            cache_write_tokens=write_5m,
            cache_write_1h_tokens=write_1h,
            cache_read_tokens=token_count(self.name, usage, "cache_read_input_tokens"),
        )

    def _tool_input(
        self, content: list[Any], tool_name: str, request_id: str | None
    ) -> dict[str, Any]:
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                value = block.get("input")
                if block.get("name") != tool_name or not isinstance(value, dict):
                    raise MalformedResponse(
                        self.name,
                        "tool_use block is not the requested tool",
                        http_status=200,
                        provider_request_id=request_id,
                    )
                return value
        raise EmptyAnswer(
            self.name,
            "no tool_use block in the answer",
            http_status=200,
            provider_request_id=request_id,
        )

    def _text(self, content: list[Any], request_id: str | None) -> str:
        text = "".join(
            block["text"]
            for block in content
            if isinstance(block, dict)
            and block.get("type") == "text"
            and isinstance(block.get("text"), str)
        )
        if not text.strip():
            raise EmptyAnswer(
                self.name, "no text in the answer", http_status=200, provider_request_id=request_id
            )
        return text

    def _error(self, reply: HttpReply) -> ProviderError:
        body = error_body(reply.body)
        error = as_object(body.get("error"))
        request_id = reply.headers.get("request-id") or optional_str(body.get("request_id"))
        detail = error_detail(reply.status, error.get("type"))
        if reply.status == 429:
            wait = rate_limit_wait(reply.headers, self._clock.now())
            if wait is None:
                return SpendCapReached(
                    self.name, detail, http_status=429, provider_request_id=request_id
                )
            return RateLimited(
                self.name, detail, http_status=429, retry_after=wait, provider_request_id=request_id
            )
        cls = error_class(_STATUS_ERRORS, reply.status)
        refined = _message_class(error) if cls is InvalidRequest else None
        if refined is not None:
            cls, detail = rejected(refined, detail)
        return cls(self.name, detail, http_status=reply.status, provider_request_id=request_id)


def _message_class(error: dict[str, Any]) -> type[ProviderError] | None:
    """The class :data:`_MESSAGE_CLASSES` reads from a 400 ``error`` object's message, or
    ``None`` (a plain bad request)."""
    message = optional_str(error.get("message")) or ""
    return next((cls for pattern, cls in _MESSAGE_CLASSES if pattern.search(message)), None)


_THINKS_BY_DEFAULT = re.compile(r"claude-opus-5(-\d{8})?")
"""Claude models that think unless told not to (their dated snapshots included)."""


def messages_payload(request: CompletionRequest, model: str) -> dict[str, Any]:
    """The Messages API request body for ``request``: ``model``, ``max_tokens``, ``temperature``,
    ``system`` (when non-empty), one user message and, for a schema, the forced tool.

    Claude Opus 5 thinks by default, and a forced tool is refused while thinking is on, so for
    it (:data:`_THINKS_BY_DEFAULT`) thinking is switched off (``thinking: {"type": "disabled"}``,
    accepted at the default effort) and ``temperature`` is left out (non-default sampling
    parameters are not supported); source: Anthropic "What's new in Claude Opus 5.5" (breaking
    changes from Opus 5), read 2026-12-04."""
    payload: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens,
        "messages": [{"role": "user", "content": request.user}],
    }
    if _THINKS_BY_DEFAULT.fullmatch(model):
        payload["thinking"] = {"type": "disabled"}
    else:
        payload["temperature"] = request.temperature
    if request.system:
        payload["system"] = request.system
    if request.json_schema is not None:
        payload["tools"] = [
            {
                "name": request.schema_name,
                "description": "Record the answer. Its input is the complete answer object.",
                "input_schema": request.json_schema,
            }
        ]
        payload["tool_choice"] = {"type": "tool", "name": request.schema_name}
    return payload


def count_payload(request: CompletionRequest, model: str) -> dict[str, Any]:
    """The count_tokens request body for ``request``: :func:`messages_payload` without the
    fields count_tokens does not take (``max_tokens``, ``temperature``), so the count covers
    exactly the system prompt, message, tool and tool_choice the real request sends."""
    payload = messages_payload(request, model)
    return {field: payload[field] for field in _COUNT_FIELDS if field in payload}


def rate_limit_wait(headers: Mapping[str, str], now: datetime) -> float | None:
    """Seconds to wait after an Anthropic 429, or ``None`` when the response gives no wait
    (the monthly spend limit: do not retry).

    ``retry-after`` (or ``retry-after-ms``) wins. Otherwise the ``anthropic-ratelimit-<bucket>-reset``
    RFC 3339 timestamps (buckets: requests, tokens, input-tokens, output-tokens) give ``reset -
    now``; buckets whose ``-remaining`` is ``0`` are the ones that bind, and when none says so the
    latest reset is used. Waits in the past become 0.
    """
    wait = retry_after_seconds(headers, now)
    if wait is not None:
        return wait
    resets: dict[str, datetime] = {}
    for bucket in _RATE_LIMIT_BUCKETS:
        reset = _rfc3339(headers.get(f"anthropic-ratelimit-{bucket}-reset"))
        if reset is not None:
            resets[bucket] = reset
    if not resets:
        return None
    exhausted = [
        reset
        for bucket, reset in resets.items()
        if headers.get(f"anthropic-ratelimit-{bucket}-remaining", "").strip() == "0"
    ]
    latest = max(exhausted or resets.values())
    return max((latest - now).total_seconds(), 0.0)


def _rfc3339(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
