"""Routing failures, in the provider error hierarchy so the API maps them like provider errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from opsgate.errors import OpsgateError
from opsgate.providers.errors import UNUSABLE_ANSWERS, ContextLengthExceeded, ProviderError

if TYPE_CHECKING:
    from opsgate.routing.router import Attempt


class CircuitOpen(ProviderError):
    """The provider's circuit breaker refused the call (open, or half-open with a trial running).
    Never sent; the router moves to the next target."""

    title = "The AI provider is temporarily disabled after repeated failures"

    @property
    def kind(self) -> str:
        return "circuit_open"


class ProviderNotConfigured(ProviderError):
    """The policy names a provider the router has no adapter for (e.g. no API key configured)."""

    title = "The AI provider is not configured"

    @property
    def kind(self) -> str:
        return "not_configured"


class DeadlineExceeded(ProviderError):
    """The policy's ``total_timeout_s`` ran out before a target answered."""

    title = "The AI providers did not answer in time"

    @property
    def kind(self) -> str:
        return "deadline_exceeded"


class AllProvidersFailed(ProviderError):
    """Every target of the chain failed, was skipped, or the deadline passed (503,
    ``provider_unavailable``). ``attempts`` lists every attempt and skip in order;
    ``last_error`` is the final failure (also chained as ``__cause__``)."""

    title = "No AI provider could answer"

    def __init__(self, attempts: Sequence[Attempt], last_error: ProviderError | None) -> None:
        provider = last_error.provider if last_error is not None else "none"
        super().__init__(provider, self.title)
        self.attempts = list(attempts)
        self.last_error = last_error


class NoUsableAnswer(AllProvidersFailed):
    """No target of the chain gave a usable answer, and at least one did answer (a 200) with
    one that could not be used: empty, malformed or cut off (:data:`UNUSABLE_ANSWERS`). 502
    ``provider_bad_response``, as the one target's own failure would be: the providers
    answered, so "no AI provider could answer" (503) would send an operator after an outage
    that is not there. ``unusable`` is the last such failure; its ``detail`` (client-safe: it
    names the failure, never the provider's text) and ``finish_reason`` are this error's.
    ``attempts`` and ``last_error`` (the chain's final failure, which may be another kind) as
    in :class:`AllProvidersFailed`."""

    code = "provider_bad_response"
    status = 502
    title = "No AI provider gave a usable answer"

    def __init__(self, attempts: Sequence[Attempt], last_error: ProviderError | None,
                 unusable: ProviderError) -> None:
        super().__init__(attempts, last_error)
        self.detail = unusable.detail
        self.unusable = unusable
        self.finish_reason = unusable.finish_reason


def chain_failed(attempts: Sequence[Attempt], failures: Sequence[ProviderError]) -> AllProvidersFailed:
    """The error of a chain whose every target failed or was skipped (``failures`` in order,
    ``attempts`` as recorded): :class:`NoUsableAnswer` (502) when a provider answered with an
    answer that could not be used, else :class:`AllProvidersFailed` (503: nothing answered)."""
    last_error = failures[-1] if failures else None
    unusable = [f for f in failures if isinstance(f, UNUSABLE_ANSWERS)]
    if unusable:
        return NoUsableAnswer(attempts, last_error, unusable[-1])
    return AllProvidersFailed(attempts, last_error)


class ClientClosed(OpsgateError):
    """The caller went away before the call was served (the HTTP client closed its connection;
    status 499 "Client Closed Request", nginx's code for it, since HTTP has none): the router
    starts no further provider request, retry, fallback or schema repair once it has seen this
    (:class:`~opsgate.routing.router.Cancel`). A request already in flight was let finish and is
    charged as usual. ``attempts`` lists the attempts made before it, as in
    :class:`AllProvidersFailed`. Nobody reads the answer; the code is for the log, the ledger's
    ``result`` entry and the metrics."""

    code = "client_closed"
    status = 499
    title = "The client closed the request before it was served"

    def __init__(self, attempts: Sequence[Attempt] = ()) -> None:
        super().__init__("The client closed the connection; no further provider request was sent")
        self.attempts = list(attempts)


class ContextWindowTooSmall(ContextLengthExceeded):
    """The prompt's bound exceeds the target's context window (:mod:`opsgate.routing.windows`):
    the target is skipped, never sent; the router moves to the next target."""

    @property
    def kind(self) -> str:
        return "context_window"


class InputTooLarge(ContextLengthExceeded):
    """No target of the chain can take the prompt (413, ``input_too_large``): each one refused it
    for its context length, or was skipped because the prompt's bound exceeds its context window
    (:mod:`opsgate.routing.windows`). ``attempts`` and ``last_error`` as in
    :class:`AllProvidersFailed`."""

    title = "The input is too large for the AI models of this operation"

    def __init__(self, attempts: Sequence[Attempt], last_error: ProviderError | None) -> None:
        provider = last_error.provider if last_error is not None else "none"
        super().__init__(provider, "The prompt does not fit the context window of any model of this operation")
        self.attempts = list(attempts)
        self.last_error = last_error
