"""Typed provider failures; the router decides on retry and fallback from the class alone.

Each class carries two policy flags:

- ``retryable``: the same provider may succeed if asked again (after ``retry_after`` seconds
  when the provider said so).
- ``fallback``: the next provider in the chain may be tried. Content-policy refusals fall back only
  when the routing policy says so.

and one ``scope``, what the failure says is unhealthy (:class:`Scope`): the router's circuit
breakers are kept per provider and per (provider, model), and each failure counts against the
one its scope names.

``detail`` is safe to show a client: it never contains the provider's raw body, a key or a host.
"""

from __future__ import annotations

from enum import StrEnum

from opsgate.errors import OpsgateError
from opsgate.providers.base import FinishReason, Usage


class Scope(StrEnum):
    """What a failure says is unhealthy, for the router's circuit breakers
    (:mod:`opsgate.routing.breaker`)."""

    REQUEST = "request"
    """Nothing: the request itself (invalid, refused, too long) or a model the provider does not
    serve; neither breaker counts it."""
    MODEL = "model"
    """One model of the provider: rate limits, overload, 5xx, timeouts, unusable answers. Counts
    against the target's (provider, model) breaker; the provider's other models stay callable."""
    PROVIDER = "provider"
    """The provider's endpoint or account: connection, TLS and DNS failures, credentials,
    billing, an account's spend cap. Counts against the provider's breaker: every model of it
    is skipped."""


class ProviderError(OpsgateError):
    """A provider call failed. ``status`` here is the API status we answer with, ``http_status``
    the provider's status (``None`` for transport failures); ``retry_after`` is in seconds.
    ``usage`` is what the provider reported billing for an answer that could not be used (a
    refusal or an unusable 200 that still carried its usage object), ``None`` when it reported
    nothing; the adapters set it, the metering charges it. ``served_model`` is the model such an
    answer says answered (``model``, Gemini's ``modelVersion``), ``None`` when it names none: the
    metering prices ``usage`` at that model. ``finish_reason`` is the normalised
    stop reason of a 200 answer that could not be used (:class:`IncompleteAnswer`), ``None``
    otherwise; the pipeline records it. ``scope`` is the class's
    :class:`Scope`; an adapter may set it on one error when the answer says more (a Gemini
    per-day quota of one model)."""

    code = "provider_unavailable"
    status = 503
    title = "The AI provider is unavailable"
    retryable = False
    fallback = True
    scope = Scope.PROVIDER

    def __init__(
        self,
        provider: str,
        detail: str | None = None,
        *,
        http_status: int | None = None,
        retry_after: float | None = None,
        provider_request_id: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.provider = provider
        self.http_status = http_status
        self.retry_after = retry_after
        self.provider_request_id = provider_request_id
        self.usage: Usage | None = None
        self.finish_reason: FinishReason | None = None
        self.served_model: str | None = None

    @property
    def kind(self) -> str:
        """A short stable name for logs and the operation log, e.g. ``rate_limited``."""
        return _KINDS.get(type(self), "provider_error")

    @property
    def timed_out(self) -> bool:
        """Whether the failure says the provider did not answer in time: HTTP 408 Request Timeout
        or 504 Gateway Timeout (Anthropic ``timeout_error``, Gemini ``DEADLINE_EXCEEDED``,
        a proxy's gateway timeout; RFC 9110 §15.5.9, §15.6.5), or our own attempt timeout
        (:class:`ProviderTimeout`). The router does not retry these in place while a later
        target can be called."""
        return self.http_status in TIMED_OUT_STATUSES


TIMED_OUT_STATUSES = frozenset({408, 504})
"""Provider statuses that mean "no answer in time" (:attr:`ProviderError.timed_out`)."""


class RateLimited(ProviderError):
    """429 with a wait we can honour (Retry-After, Anthropic reset headers, Gemini RetryInfo)."""

    retryable = True
    scope = Scope.MODEL
    title = "The AI provider is rate limiting"


class SpendCapReached(ProviderError):
    """A usage limit that will not clear by waiting: an Anthropic 429 without a wait (the
    monthly spend limit) or its 400 "You have reached your specified API usage limits", OpenAI's
    400 ``billing_hard_limit_reached``. Falls back, never retried."""

    title = "The AI provider's spend limit is reached"


class Overloaded(ProviderError):
    """Anthropic 529 overloaded_error, 503 UNAVAILABLE / server overloaded."""

    retryable = True
    scope = Scope.MODEL
    title = "The AI provider is overloaded"


class ServerError(ProviderError):
    """500, 502, 504 and other 5xx from the provider, and 408 Request Timeout (the provider gave
    up waiting; RFC 9110 §15.5.9 lets the client repeat the request)."""

    retryable = True
    scope = Scope.MODEL
    title = "The AI provider failed"


class ProviderTimeout(ProviderError):
    """No complete answer within the policy's timeout. Retryable, but the router retries it
    only on the chain's last callable target (a hanging target would use up the deadline; see
    :attr:`ProviderError.timed_out`)."""

    retryable = True
    scope = Scope.MODEL
    title = "The AI provider timed out"

    @property
    def timed_out(self) -> bool:
        """Always ``True``: no answer within the attempt's time limit."""
        return True


class ConnectionFailed(ProviderError):
    """Connection refused, reset, TLS failure or DNS failure."""

    retryable = True
    title = "The AI provider could not be reached"


class AuthenticationFailed(ProviderError):
    """401/403, or a 400 that says so (Gemini ``ErrorInfo.reason`` ``API_KEY_INVALID``,
    Anthropic "This organization has been disabled."): the key or account is missing, wrong,
    expired or lacks permission. Falls back, never retried."""

    title = "The AI provider rejected our credentials"


class BillingFailed(ProviderError):
    """402, or a 400 that says so (Anthropic "Your credit balance is too low", Gemini
    ``FAILED_PRECONDITION`` or ``ErrorInfo.reason`` ``BILLING_DISABLED``): insufficient balance,
    billing off or not available in the account's region. Falls back, never retried."""

    title = "The AI provider refused for billing reasons"


class InvalidRequest(ProviderError):
    """400/413/422 (and other 4xx) that the body does not refine into an account-level failure,
    a refusal or a retired model: the request itself is wrong; another provider would not help."""

    code = "provider_rejected"
    status = 502
    fallback = False
    scope = Scope.REQUEST
    title = "The AI provider rejected the request"


class ModelUnavailable(ProviderError):
    """The provider does not serve the requested model (retired or unknown): Anthropic 404
    ``not_found_error``, OpenAI-compatible 404 or 400 ``model_not_found``, Gemini 404
    ``NOT_FOUND``. Never retried on the same target; the next target is tried."""

    code = "model_unavailable"
    scope = Scope.REQUEST
    title = "The AI provider no longer serves the configured model"


class ContentFiltered(ProviderError):
    """A content-policy refusal (422 ``content_filtered``): a refusal, a SAFETY/blocked finish, a
    blocked prompt, or a 400 whose error says content policy (see each adapter). Never retried on
    the same target; falls back only if the policy asks."""

    code = "content_filtered"
    status = 422
    fallback = False
    scope = Scope.REQUEST
    title = "The AI provider declined to answer this content"


class ContextLengthExceeded(ProviderError):
    """The prompt does not fit the target's context window (413 ``input_too_large``): Anthropic
    400 "prompt is too long", OpenAI-compatible 400
    ``context_length_exceeded`` or "maximum context length", Gemini 400 "input token count ...
    exceeds the maximum". Never retried on the same target; the next target, which may have a
    larger window, is tried. The client sees it only when no target of the chain can take the
    prompt."""

    code = "input_too_large"
    status = 413
    scope = Scope.REQUEST
    title = "The input is too large for the AI models of this operation"


class EmptyAnswer(ProviderError):
    """A 200 with no usable content (no candidates, no text, no tool input)."""

    code = "provider_bad_response"
    status = 502
    scope = Scope.MODEL
    title = "The AI provider returned an empty answer"


class MalformedResponse(ProviderError):
    """A body that is not the documented shape (invalid JSON, missing fields)."""

    code = "provider_bad_response"
    status = 502
    scope = Scope.MODEL
    title = "The AI provider returned a malformed answer"


class IncompleteAnswer(ProviderError):
    """A 200 whose answer stopped before it was complete (:attr:`FinishReason.incomplete`):
    Anthropic ``stop_reason`` ``max_tokens``, ``model_context_window_exceeded`` or
    ``pause_turn``, OpenAI-compatible ``finish_reason`` ``length``, Gemini ``finishReason``
    ``MAX_TOKENS``. Never used as an answer, even when the cut-off text still parses and
    validates (a draft cut mid-sentence). Billed at the usage it reports. Not retried on the same
    target (the same request stops at the same limit) and not counted against a breaker (the
    request's output limit, not the model's health); the next target is tried."""

    code = "provider_bad_response"
    status = 502
    scope = Scope.REQUEST
    title = "The AI provider's answer was cut off"

    def __init__(
        self,
        provider: str,
        finish_reason: FinishReason,
        raw_finish_reason: str | None,
        *,
        provider_request_id: str | None = None,
    ) -> None:
        super().__init__(
            provider,
            f"the answer stopped before it was complete ({raw_finish_reason or finish_reason.value})",
            http_status=200,
            provider_request_id=provider_request_id,
        )
        self.finish_reason = finish_reason


def require_complete(
    provider: str, finish: FinishReason, raw: str | None, request_id: str | None
) -> FinishReason:
    """``finish`` (the normalised stop reason of a 200 answer, ``raw`` the provider's own
    value, only ever one the adapter's table maps) when the answer is complete; raises
    :class:`IncompleteAnswer` when it stopped early (:attr:`FinishReason.incomplete`). Each
    adapter calls it before it reads the answer's content."""
    if finish.incomplete:
        raise IncompleteAnswer(provider, finish, raw, provider_request_id=request_id)
    return finish


UNUSABLE_ANSWERS: tuple[type[ProviderError], ...] = (EmptyAnswer, MalformedResponse, IncompleteAnswer)
"""The failures that say a provider answered (a 200) but the answer could not be used.
A chain that ends without a usable answer after one of them is ``provider_bad_response``
(502), not ``provider_unavailable`` (:func:`opsgate.routing.errors.chain_failed`)."""


_KINDS: dict[type[ProviderError], str] = {
    RateLimited: "rate_limited",
    SpendCapReached: "spend_cap",
    Overloaded: "overloaded",
    ServerError: "server_error",
    ProviderTimeout: "timeout",
    ConnectionFailed: "connection_failed",
    AuthenticationFailed: "authentication_failed",
    BillingFailed: "billing_failed",
    InvalidRequest: "invalid_request",
    ModelUnavailable: "model_unavailable",
    ContentFiltered: "content_filtered",
    ContextLengthExceeded: "context_length",
    EmptyAnswer: "empty_answer",
    MalformedResponse: "malformed_response",
    IncompleteAnswer: "incomplete_answer",
}
