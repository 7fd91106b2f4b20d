"""Google Gemini adapter (``POST {base}/v1beta/models/{model}:generateContent``, non-streaming),
and its token count (``:countTokens``).

Wire format: Gemini API reference "generateContent" (GenerateContentResponse, UsageMetadata,
FinishReason, BlockReason), "Counting tokens" (CountTokensRequest/Response), "Structured output"
and "Troubleshooting" (error codes). The key
travels in the ``x-goog-api-key`` header, never as ``?key=`` (URLs end up in logs).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

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
    Scope,
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
    safe_token,
    token_count,
)
from opsgate.providers.schema import to_gemini_schema

GEMINI_BASE_URL = "https://generativelanguage.googleapis.com"

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_BLOCKED_FINISH = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
)
_FINISH_REASONS = {"STOP": FinishReason.STOP, "MAX_TOKENS": FinishReason.LENGTH}
_STATUS_ERRORS: dict[int, type[ProviderError]] = {
    400: InvalidRequest,
    404: ModelUnavailable,
    401: AuthenticationFailed,
    402: BillingFailed,
    403: AuthenticationFailed,
    429: RateLimited,
    500: ServerError,
    504: ServerError,
    503: Overloaded,
}
_CONTEXT_MESSAGE = re.compile(r"input token count.*exceeds the maximum", re.I | re.S)
"""Gemini's 400 INVALID_ARGUMENT for a prompt beyond the window: "The input token count (1200293)
exceeds the maximum number of tokens allowed (1048576)."."""
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_ACCOUNT_REASONS: dict[str, type[ProviderError]] = {
    **dict.fromkeys(
        (
            "API_KEY_INVALID",  # also "API key expired. Please renew the API key."
            "API_KEY_EXPIRED",
            "API_KEY_NOT_FOUND",
            "API_KEY_SERVICE_BLOCKED",
            "API_KEY_HTTP_REFERRER_BLOCKED",
            "API_KEY_IP_ADDRESS_BLOCKED",
            "API_KEY_ANDROID_APP_BLOCKED",
            "API_KEY_IOS_APP_BLOCKED",
            "SERVICE_DISABLED",
            "CONSUMER_INVALID",
            "CONSUMER_SUSPENDED",
            "USER_PROJECT_DENIED",
            "ACCESS_TOKEN_EXPIRED",
            "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
            "ACCESS_TOKEN_TYPE_UNSUPPORTED",
            "ACCOUNT_STATE_INVALID",
            "SECURITY_POLICY_VIOLATED",
        ),
        AuthenticationFailed,
    ),
    "BILLING_DISABLED": BillingFailed,
    "LOCATION_TAX_POLICY_VIOLATED": BillingFailed,
}
"""``google.rpc.ErrorInfo.reason`` values (googleapis ``google/api/error_reason.proto``, and
``API_KEY_EXPIRED``/``API_KEY_NOT_FOUND`` from Service Control's check errors) that say the
key, project or billing account is refused: the request is fine and another provider can serve
it. Gemini sends them with 400 ``INVALID_ARGUMENT`` (e.g. "API key not valid. Please pass a
valid API key." with reason ``API_KEY_INVALID``) as well as with 403."""
_ACCOUNT_STATUSES: dict[str, type[ProviderError]] = {"FAILED_PRECONDITION": BillingFailed}
"""Gemini's 400 ``FAILED_PRECONDITION``: "Gemini API free tier is not available in your country.
Please enable billing on your project in Google AI Studio." (Gemini API "Troubleshooting"), also
"User location is not supported for the API use.": a state of the account, not of the request."""
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
QUOTA_DAY_ZONE = ZoneInfo("America/Los_Angeles")
"""Gemini's per-day quotas (requests or tokens per day) reset at midnight Pacific time (Gemini
API "Rate limits", read 2026-12-05)."""
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)s\s*")
_RETRY_IN_MESSAGE = re.compile(r"retry in (\d+(?:\.\d+)?)\s*(ms|s)\b", re.IGNORECASE)


class GeminiProvider:
    """Calls Gemini models through generateContent over the shared aiohttp session.

    A schema request sends ``responseMimeType: application/json`` and ``responseSchema`` (the
    schema converted by :func:`opsgate.providers.schema.to_gemini_schema`). ``api_key`` may be
    ``None``: calls then raise :class:`AuthenticationFailed` ("GEMINI_API_KEY is not set")
    without a network call. ``base_url`` is checked with ``check_base_url``. ``clock`` dates a
    per-day quota's reset (:func:`daily_quota_reset_s`).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_key: str | None,
        *,
        base_url: str = GEMINI_BASE_URL,
        name: str = "gemini",
        key_env: str = "GEMINI_API_KEY",
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self._session = session
        self._api_key = api_key
        self._key_env = key_env
        self._base = check_base_url(base_url)
        self._clock = clock or SystemClock()

    async def complete(
        self, request: CompletionRequest, model: str, timeout_s: float
    ) -> Completion:
        """One generateContent call. Raises the :mod:`opsgate.providers.errors` class for the
        status, :class:`ContentFiltered` (blocked prompt or a safety finish),
        :class:`IncompleteAnswer` (``MAX_TOKENS``), :class:`EmptyAnswer` (no candidate or no text) or :class:`MalformedResponse`; :class:`InvalidRequest` for a
        model name that is not a plain model id."""
        key = require_key(self.name, self._api_key, self._key_env)
        reply = await post_json(
            self._session,
            self.name,
            f"{self._base}/v1beta/models/{self._model_id(model)}:generateContent",
            headers={"x-goog-api-key": key},
            payload=generate_content_payload(request, model),
            timeout_s=timeout_s,
        )
        if reply.status != 200:
            raise self._error(reply)
        try:
            return self._completion(request, model, reply)
        except ProviderError as exc:  # an unusable 200 is still billed for what it reported
            exc.usage = reported_usage(reply.body, "usageMetadata", self._usage)
            exc.served_model = reported_model(reply.body, "modelVersion")
            raise

    async def count_tokens(
        self, request: CompletionRequest, model: str, timeout_s: float
    ) -> InputCount:
        """The input tokens of ``request`` to ``model`` from ``countTokens`` (free), sent as a
        whole ``generateContentRequest`` (the system instruction, contents and generation config
        :meth:`complete` sends), so ``totalTokens`` is the ``promptTokenCount`` that request
        reports, which bounds what it bills as input (cached tokens are inside it). No
        overhead is documented. Raises the :mod:`opsgate.providers.errors` class for an error
        status, a timeout or a transport failure, and :class:`MalformedResponse` for a body
        without ``totalTokens``."""
        key = require_key(self.name, self._api_key, self._key_env)
        model_id = self._model_id(model)
        whole = {"model": f"models/{model_id}", **generate_content_payload(request, model)}
        reply = await post_json(
            self._session,
            self.name,
            f"{self._base}/v1beta/models/{model_id}:countTokens",
            headers={"x-goog-api-key": key},
            payload={"generateContentRequest": whole},
            timeout_s=timeout_s,
        )
        if reply.status != 200:
            raise self._error(reply)
        return InputCount(token_count(self.name, decode_object(self.name, reply.body), "totalTokens",
                                      required=True))

    def _model_id(self, model: str) -> str:
        model_id = model.removeprefix("models/")
        if not _MODEL_NAME.fullmatch(model_id):
            raise InvalidRequest(self.name, "the model name is not a Gemini model id")
        return model_id

    def _completion(self, request: CompletionRequest, model: str, reply: HttpReply) -> Completion:
        body = decode_object(self.name, reply.body)
        request_id = reply.headers.get("x-goog-request-id") or optional_str(body.get("responseId"))
        candidate = self._candidate(body, request_id)
        raw_finish = optional_str(candidate.get("finishReason"))
        if raw_finish in _BLOCKED_FINISH:
            raise ContentFiltered(
                self.name,
                f"the answer was blocked ({raw_finish})",
                http_status=200,
                provider_request_id=request_id,
            )
        finish = _FINISH_REASONS.get(raw_finish or "", FinishReason.UNKNOWN)
        require_complete(self.name, finish, raw_finish, request_id)
        usage = self._usage(body.get("usageMetadata"))
        text = _answer_text(candidate.get("content"))
        if not text.strip():
            raise EmptyAnswer(
                self.name, "no text in the answer", http_status=200, provider_request_id=request_id
            )
        data = (
            answer_object(self.name, text, request_id) if request.json_schema is not None else None
        )
        return Completion(
            provider=self.name,
            model=model,
            served_model=optional_str(body.get("modelVersion")),
            text=text,
            data=data,
            usage=usage,
            finish_reason=finish,
            raw_finish_reason=raw_finish,
            provider_request_id=request_id,
            provider_latency_ms=reply.latency_ms,
        )

    def _candidate(self, body: dict[str, Any], request_id: str | None) -> dict[str, Any]:
        candidates = body.get("candidates")
        if isinstance(candidates, list) and candidates:
            if not isinstance(candidates[0], dict):
                raise MalformedResponse(self.name, "candidate is not an object", http_status=200)
            return candidates[0]
        feedback = body.get("promptFeedback")
        reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
        if reason:
            shown = safe_token(reason) or "blocked"
            raise ContentFiltered(
                self.name,
                f"the prompt was blocked ({shown})",
                http_status=200,
                provider_request_id=request_id,
            )
        raise EmptyAnswer(
            self.name,
            "no candidates in the answer",
            http_status=200,
            provider_request_id=request_id,
        )

    def _usage(self, meta: Any) -> Usage:
        """``usageMetadata`` as :class:`Usage`: input ``promptTokenCount`` (cached tokens
        included) minus ``cachedContentTokenCount`` plus ``toolUsePromptTokenCount``; cache reads
        ``cachedContentTokenCount``; output ``candidatesTokenCount + thoughtsTokenCount``.
        ``totalTokenCount`` is the sum of prompt, tool-use prompt, candidates and thoughts: what
        it counts beyond the parts present is the prompt when ``promptTokenCount`` is missing,
        else output (a missing candidates or thoughts count), so a missing count never lowers
        the bill. Raises :class:`MalformedResponse` when cached tokens exceed the prompt or neither
        ``promptTokenCount`` nor ``totalTokenCount`` is present (the usage is then unknown and the
        request is charged its worst case)."""
        if not isinstance(meta, dict):
            raise MalformedResponse(self.name, "usageMetadata is missing", http_status=200)
        prompt = optional_token_count(self.name, meta, "promptTokenCount")
        cached = token_count(self.name, meta, "cachedContentTokenCount")
        tool_prompt = token_count(self.name, meta, "toolUsePromptTokenCount")
        thoughts = token_count(self.name, meta, "thoughtsTokenCount")
        output = token_count(self.name, meta, "candidatesTokenCount") + thoughts
        total = optional_token_count(self.name, meta, "totalTokenCount")
        if prompt is None and total is None:
            raise MalformedResponse(self.name, "usageMetadata counts no prompt", http_status=200)
        unexplained = max((total or 0) - (prompt or 0) - tool_prompt - output, 0)
        if prompt is None:
            prompt, unexplained = unexplained, 0
        if cached > prompt:
            raise MalformedResponse(
                self.name, "cached tokens exceed prompt tokens", http_status=200
            )
        return Usage(
            input_tokens=prompt - cached + tool_prompt,
            cache_read_tokens=cached,
            output_tokens=output + unexplained,
            reasoning_tokens=thoughts,
        )

    def _error(self, reply: HttpReply) -> ProviderError:
        body = error_body(reply.body)
        error = as_object(body.get("error"))
        detail = error_detail(reply.status, error.get("status"))
        retry_after = retry_delay(error) if reply.status == 429 else None
        cls = error_class(_STATUS_ERRORS, reply.status)
        refined = _rejection(error) if cls is InvalidRequest else None
        if refined is not None:
            cls, detail = rejected(refined, detail)
        quota = daily_quota(error) if cls is RateLimited else None
        if quota is not None:
            cls, detail = rejected(SpendCapReached, detail)
            retry_after = daily_quota_reset_s(self._clock.now())
        found = cls(
            self.name,
            detail,
            http_status=reply.status,
            retry_after=retry_after,
            provider_request_id=reply.headers.get("x-goog-request-id"),
        )
        if quota is not None and "PerModel" in quota:
            found.scope = Scope.MODEL  # the model's own daily quota: the project's other models still serve
        return found


GEMINI_3_THINKING_LEVEL = "low"
"""Gemini 3 models think at level ``high`` unless told otherwise (thought tokens are billed as
output, ``thoughtsTokenCount``); the gateway's structured answers need little, so ``low``."""

_GEMINI_3 = re.compile(r"(models/)?gemini-3[.-]")


def generate_content_payload(request: CompletionRequest, model: str | None = None) -> dict[str, Any]:
    """The generateContent request body: ``systemInstruction`` (when non-empty), one user turn and
    ``generationConfig`` (``maxOutputTokens``, ``temperature`` and, for a schema,
    ``responseMimeType: application/json`` with ``responseSchema``). For a Gemini 3 ``model`` it
    adds ``thinkingConfig.thinkingLevel`` (Gemini 3 replaces 2.5's ``thinkingBudget`` with
    levels; sending both is a 400), per Google's "Gemini thinking" guide, read 2026-12-04."""
    config: dict[str, Any] = {
        "maxOutputTokens": request.max_tokens,
        "temperature": request.temperature,
    }
    if request.json_schema is not None:
        config["responseMimeType"] = "application/json"
        config["responseSchema"] = to_gemini_schema(request.json_schema)
    if model is not None and _GEMINI_3.match(model):
        config["thinkingConfig"] = {"thinkingLevel": GEMINI_3_THINKING_LEVEL}
    payload: dict[str, Any] = {
        "contents": [{"role": "user", "parts": [{"text": request.user}]}],
        "generationConfig": config,
    }
    if request.system:
        payload["systemInstruction"] = {"parts": [{"text": request.system}]}
    return payload


def _rejection(error: dict[str, Any]) -> type[ProviderError] | None:
    """What a 400 ``error`` object means beyond "bad request", or ``None``: an account-level
    failure by its structured fields first (an ``ErrorInfo`` reason of :data:`_ACCOUNT_REASONS`,
    then the ``status`` :data:`_ACCOUNT_STATUSES`), else a prompt beyond the context window by
    its message (:data:`_CONTEXT_MESSAGE`; Gemini gives nothing structured for it). A detail
    without ``@type`` is read as an ``ErrorInfo`` (some proxies drop the type)."""
    details = error.get("details")
    for item in details if isinstance(details, list) else []:
        if isinstance(item, dict) and item.get("@type", _ERROR_INFO) == _ERROR_INFO:
            account = _ACCOUNT_REASONS.get(str(item.get("reason")))
            if account is not None:
                return account
    account = _ACCOUNT_STATUSES.get(str(error.get("status")))
    if account is not None:
        return account
    message = optional_str(error.get("message")) or ""
    return ContextLengthExceeded if _CONTEXT_MESSAGE.search(message) else None


def daily_quota(error: dict[str, Any]) -> str | None:
    """The first per-day quota a Gemini 429 ``error`` object names among its
    ``google.rpc.QuotaFailure`` violations (a ``quotaId`` such as
    ``GenerateRequestsPerDayPerProjectPerModel-FreeTier``), else ``None``. Such a quota clears
    only at midnight Pacific time, whatever ``RetryInfo`` or "Please retry in 20s" the same
    answer carries."""
    details = error.get("details")
    for item in details if isinstance(details, list) else []:
        if isinstance(item, dict) and item.get("@type") == _QUOTA_FAILURE:
            violations = item.get("violations")
            for violation in violations if isinstance(violations, list) else []:
                quota_id = violation.get("quotaId") if isinstance(violation, dict) else None
                if isinstance(quota_id, str) and "PerDay" in quota_id:
                    return quota_id
    return None


def daily_quota_reset_s(now: datetime) -> float:
    """Seconds from ``now`` (timezone-aware) to the next midnight in :data:`QUOTA_DAY_ZONE`, when
    Gemini's per-day quotas reset."""
    local = now.astimezone(QUOTA_DAY_ZONE)
    midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), QUOTA_DAY_ZONE)
    return (midnight - now).total_seconds()


def retry_delay(error: dict[str, Any]) -> float | None:
    """Seconds to wait from a Gemini 429 ``error`` object: the ``google.rpc.RetryInfo`` detail's
    ``retryDelay`` (a protobuf Duration such as ``"32s"`` or ``"32.5s"``), else a "Please retry in
    32.5s" (or ``ms``) phrase in ``message``; ``None`` when neither is present."""
    details = error.get("details")
    for item in details if isinstance(details, list) else []:
        if isinstance(item, dict) and item.get("@type") == _RETRY_INFO:
            match = _DURATION.fullmatch(str(item.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    message = error.get("message")
    match = _RETRY_IN_MESSAGE.search(message) if isinstance(message, str) else None
    if match is None:
        return None
    value = float(match.group(1))
    return value / 1000.0 if match.group(2).lower() == "ms" else value


def _answer_text(content: Any) -> str:
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        return ""
    return "".join(
        part["text"]
        for part in parts
        if isinstance(part, dict) and isinstance(part.get("text"), str) and not part.get("thought")
    )
