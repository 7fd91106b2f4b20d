"""Context windows: which targets of a chain a prompt may not fit, checked before sending.

A target's window, in tokens, is the first of:

1. ``context_window`` of its ``[providers.<name>]`` table in ``opsgate.toml`` (an OpenAI-compatible
   endpoint such as vLLM serves what its ``--max-model-len`` allows);
2. the model facts of the maintained price data (``genai-prices``' ``context_window``, read
   through :class:`ModelFacts`, i.e. :meth:`opsgate.metering.prices.PriceBook.context_window`);

and unknown otherwise (the target is never skipped). The prompt's size is the bound the budget
reservation holds (:func:`opsgate.metering.worstcase.prompt_token_bound`, injected as ``bound``:
routing and metering are independent layers), plus ``max_tokens``, since the providers count
the answer's room against the window too (Anthropic "input length and ``max_tokens`` exceed
context limit", OpenAI-compatible "you requested N tokens (P in the messages, C in the
completion)").

That bound is an *upper* bound (UTF-8 bytes, about four times the real token count of English
text): exceeding a window says the prompt *may* not fit, not that it cannot. So the router skips
such targets while some target of the chain has room; when the bound rules out every target, it
skips none and lets the providers decide (their context-length refusals fall back along the chain,
and 413 ``input_too_large`` follows only when every one refused).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from opsgate.config import Settings
from opsgate.providers.base import CompletionRequest
from opsgate.routing.policy import Target


class ModelFacts(Protocol):
    """What the window check needs of the price data: a model's context window in tokens, or
    ``None`` when the data does not say."""

    def context_window(self, provider: str, model: str) -> int | None: ...


class ContextWindows:
    """The context windows of the gateway's targets and the prompt bound to compare them with.

    ``configured`` maps a provider name to the window every one of its models has (from
    ``[providers.<name>] context_window``); ``facts`` gives the other models' windows;
    ``bound(request)`` is an upper bound on ``request``'s prompt tokens.
    """

    def __init__(
        self,
        bound: Callable[[CompletionRequest], int],
        facts: ModelFacts | None = None,
        configured: dict[str, int] | None = None,
    ) -> None:
        self._bound = bound
        self._facts = facts
        self._configured = dict(configured or {})

    @classmethod
    def from_settings(
        cls, settings: Settings, bound: Callable[[CompletionRequest], int], facts: ModelFacts | None
    ) -> ContextWindows:
        """The windows of ``settings.providers``' ``context_window`` over ``facts``."""
        configured = {
            name: p.context_window for name, p in settings.providers.items() if p.context_window is not None
        }
        return cls(bound, facts, configured)

    def window(self, target: Target) -> int | None:
        """``target``'s context window in tokens, or ``None`` when unknown."""
        if target.provider in self._configured:
            return self._configured[target.provider]
        return self._facts.context_window(target.provider, target.model) if self._facts else None

    def needed(self, request: CompletionRequest) -> int:
        """The tokens ``request`` may need of a window: its prompt bound plus ``max_tokens``."""
        return self._bound(request) + request.max_tokens

    def too_small(self, request: CompletionRequest, chain: Sequence[Target]) -> set[Target]:
        """The targets of ``chain`` whose window is smaller than :meth:`needed`, or the empty set
        when that would be all of them (see the module docstring)."""
        needed = self.needed(request)
        small = {t for t in chain if (w := self.window(t)) is not None and w < needed}
        return small if len(small) < len(set(chain)) else set()
