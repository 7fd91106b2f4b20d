"""The normalised shapes every provider adapter produces and consumes.

An adapter turns a :class:`CompletionRequest` into its provider's wire request, and the wire
response into a :class:`Completion` (or raises one of :mod:`opsgate.providers.errors`). Usage is
normalised so that each field is billed at exactly one price (see :mod:`opsgate.metering.cost`):

- ``input_tokens``: uncached input billed at the input price (Anthropic ``input_tokens``;
  DeepSeek ``prompt_cache_miss_tokens``, at least ``prompt_tokens - prompt_cache_hit_tokens``;
  Gemini ``promptTokenCount - cachedContentTokenCount + toolUsePromptTokenCount``). A missing
  breakdown field is derived from the provider's totals, never read as 0 (see each adapter's
  ``_usage``).
- ``cache_write_tokens`` / ``cache_write_1h_tokens``: input written to the 5-minute / 1-hour cache
  (Anthropic ``cache_creation_input_tokens`` split by ``cache_creation.ephemeral_*``; what the
  split does not cover is 5-minute, the default TTL).
- ``cache_read_tokens``: input read from the cache (Anthropic ``cache_read_input_tokens``; DeepSeek
  ``prompt_cache_hit_tokens``; Gemini ``cachedContentTokenCount``).
- ``output_tokens``: everything billed at the output price, reasoning/thoughts included (Anthropic
  ``output_tokens``; DeepSeek ``completion_tokens``; Gemini ``candidatesTokenCount +
  thoughtsTokenCount``).
- ``reasoning_tokens``: the part of ``output_tokens`` spent on reasoning/thoughts (informational).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable


class FinishReason(StrEnum):
    """Why generation stopped, mapped without loss from each provider's own value.

    Anthropic ``stop_reason``, OpenAI ``finish_reason`` and Gemini ``finishReason`` map onto these;
    a value we do not know stays ``UNKNOWN`` (the raw value is kept in ``Completion.raw_finish_reason``)
    and is never turned into ``STOP``.
    """

    STOP = "stop"
    LENGTH = "length"
    TOOL_USE = "tool_use"
    CONTENT_FILTER = "content_filter"
    PAUSE = "pause"
    CONTEXT_EXCEEDED = "context_exceeded"
    UNKNOWN = "unknown"

    @property
    def incomplete(self) -> bool:
        """Whether generation stopped before the answer was complete: the output limit
        (Anthropic ``max_tokens``, OpenAI ``length``, Gemini ``MAX_TOKENS``), the context window
        (Anthropic ``model_context_window_exceeded``) or a paused turn (Anthropic ``pause_turn``,
        "Handling stop reasons": the turn is to be continued). Such an answer is never used
        (:class:`opsgate.providers.errors.IncompleteAnswer`), even when what arrived parses."""
        return self in _INCOMPLETE


_INCOMPLETE = frozenset({FinishReason.LENGTH, FinishReason.PAUSE, FinishReason.CONTEXT_EXCEEDED})


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts, each billed at one price (see the module docstring). All integers >= 0."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """All billed tokens: input of every kind plus output."""
        return (
            self.input_tokens
            + self.cache_write_tokens
            + self.cache_write_1h_tokens
            + self.cache_read_tokens
            + self.output_tokens
        )

    def __add__(self, other: Usage) -> Usage:
        """Field-wise sum: the usage of two completions paid for in one call (e.g. a repair)."""
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            cache_write_1h_tokens=self.cache_write_1h_tokens + other.cache_write_1h_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
        )

    def as_dict(self) -> dict[str, int]:
        """The six counts by field name, in declaration order (the API's ``usage`` object):
        what :func:`dataclasses.asdict` gives, without its recursive deep copy (~20 us a call
        instead of ~1.5 us, issue 21)."""
        return {name: getattr(self, name) for name in _USAGE_FIELDS}


_USAGE_FIELDS = tuple(f.name for f in fields(Usage))


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """One provider-neutral request.

    ``system`` and ``user`` are the prompt texts; ``json_schema`` (a JSON Schema object, ``$ref``
    allowed) asks for a JSON object answer named ``schema_name``, requested in each provider's
    native way; ``max_tokens`` caps output tokens; ``temperature`` is 0..1.
    """

    system: str
    user: str
    max_tokens: int
    json_schema: dict[str, Any] | None = None
    schema_name: str = "result"
    temperature: float = 0.2


@dataclass(frozen=True, slots=True)
class Completion:
    """One normalised provider answer.

    ``data`` is the parsed JSON object when the request asked for a schema (not yet validated
    against it), otherwise ``None``; ``text`` is the answer's text (the raw JSON text for schema
    requests). ``provider_latency_ms`` is the wall time of the HTTP exchange in milliseconds.
    ``model`` is the model asked for; ``served_model`` the one the provider says answered
    (OpenAI-compatible and Anthropic ``model``, Gemini ``modelVersion``), ``None`` when it did
    not say.
    """

    provider: str
    model: str
    text: str
    data: dict[str, Any] | None
    usage: Usage
    finish_reason: FinishReason
    raw_finish_reason: str | None
    provider_request_id: str | None
    provider_latency_ms: float
    extra: dict[str, Any] = field(default_factory=dict)
    served_model: str | None = None


_SNAPSHOT = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2}|\d{3}|latest)$")


def normalise_model(model: str) -> str:
    """``model`` without a ``models/`` prefix and a dated-snapshot or version suffix
    (``-20260724``, ``-2026-07-24``, ``-001``, ``-latest``), lower-cased: the model a provider
    names a snapshot or alias of, as routing (substitutions) and metering (the model a charge
    and an invoice line are booked under) compare them."""
    return _SNAPSHOT.sub("", model.lower().removeprefix("models/"))


class Provider(Protocol):
    """What the router needs from an adapter. ``name`` is ``anthropic``, ``deepseek`` or ``gemini``
    (or any configured OpenAI-compatible endpoint's name)."""

    name: str

    async def complete(self, request: CompletionRequest, model: str, timeout_s: float) -> Completion:
        """Send ``request`` to ``model``; return a :class:`Completion` or raise a
        :class:`opsgate.providers.errors.ProviderError` subclass. Never retries by itself."""
        ...


@dataclass(frozen=True, slots=True)
class InputCount:
    """A provider's count of one request's input tokens, from its free token-count endpoint:
    what a reservation holds for the input. Anthropic's and Gemini's counts include what each
    adds around the request (Anthropic's tool-use system prompt), so nothing is added to them."""

    tokens: int


@runtime_checkable
class TokenCounter(Protocol):
    """An adapter whose provider counts input tokens before a request is sent (Anthropic
    ``count_tokens``, Gemini ``countTokens``; OpenAI-compatible endpoints have no such API)."""

    name: str

    async def count_tokens(self, request: CompletionRequest, model: str, timeout_s: float) -> InputCount:
        """Count the input of ``request`` to ``model`` exactly as :meth:`Provider.complete`
        would send it; raise a :class:`opsgate.providers.errors.ProviderError` subclass on any
        failure (a timeout is :class:`~opsgate.providers.errors.ProviderTimeout`)."""
        ...
