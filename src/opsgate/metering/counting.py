"""Exact input counts for a reservation the prompt's byte bound cannot fit (issue 16).

The reservation bounds the input by the prompt's UTF-8 byte count
(:func:`~opsgate.metering.worstcase.prompt_token_bound`), with no HTTP round trip. Only when that
bound would refuse a budget does the pipeline ask the first target's provider to count the
request exactly as it will be sent (the minimised prompt, the same system prompt and JSON
schema): Anthropic ``POST /v1/messages/count_tokens``, Gemini ``models/{model}:countTokens``,
both free. It then reserves the count (:class:`~opsgate.providers.base.InputCount`), which
already includes what the provider adds around the request, plus a margin, since the provider
calls it an estimate (:func:`~opsgate.metering.worstcase.input_token_bound`); a target that may
serve another model is not counted (:meth:`opsgate.pipeline.Gateway.countable`). A provider without a count API (DeepSeek and
other OpenAI-compatible endpoints) is not asked. A count that fails or does not answer within
its timeout falls back to the byte bound, never to a guess: :func:`count_input` then returns
an outcome without tokens, logged as a warning and counted by the observer
(``opsgate_token_counts_total``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from opsgate.providers.base import CompletionRequest, TokenCounter
from opsgate.providers.errors import ProviderError

COUNTED = "counted"
TIMEOUT = "timeout"

log = logging.getLogger("opsgate.metering")


@dataclass(frozen=True, slots=True)
class CountOutcome:
    """What one count request gave: ``outcome`` is ``counted`` or why it failed (a provider
    error's kind such as ``timeout`` or ``server_error``, or the exception's class name);
    ``input_tokens`` is the count when counted, else ``None`` (the byte bound
    stays)."""

    provider: str
    model: str
    outcome: str
    input_tokens: int | None


async def count_input(
    counter: TokenCounter, request: CompletionRequest, model: str, timeout_s: float
) -> CountOutcome:
    """Ask ``counter`` (the first target's adapter) for the input of ``request`` to ``model``
    within ``timeout_s`` seconds. Never raises (cancellation aside): any failure is an outcome
    without tokens, logged with the provider, model and failure kind (never a body or a key)."""
    try:
        async with asyncio.timeout(timeout_s):
            counted = await counter.count_tokens(request, model, timeout_s)
    except TimeoutError:
        return _failed(counter.name, model, TIMEOUT)
    except ProviderError as exc:
        return _failed(counter.name, model, exc.kind)
    except Exception as exc:  # any failure keeps the byte bound: never a guess, never a 500
        return _failed(counter.name, model, type(exc).__name__)
    return CountOutcome(counter.name, model, COUNTED, counted.tokens)


def _failed(provider: str, model: str, why: str) -> CountOutcome:
    log.warning("token count of %s/%s failed (%s); the reservation keeps the byte bound",
                provider, model, why)
    return CountOutcome(provider, model, why, None)
