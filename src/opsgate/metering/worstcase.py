"""The worst-case cost a call may incur, which the budget reservation holds.

Prompt tokens are bounded without a tokenizer: Claude's and DeepSeek's byte-level BPE and Gemini's
SentencePiece (with byte fallback) never emit a text token covering less than one UTF-8 byte, so
the prompt's UTF-8 byte count is an upper bound on its text tokens. We count the system prompt,
the user prompt and the JSON schema (pretty-printed, the larger form: DeepSeek's JSON mode puts it
in the prompt), plus :data:`PROMPT_OVERHEAD_TOKENS` for what the provider adds around them (role
and turn markers; Anthropic's tool-use system prompt is at most 346 tokens per its tool-use
pricing table). A ``bytes / 3`` estimate is *not* an upper bound (CJK text is ~1 token per
3 bytes or worse, digits and symbols ~1 per byte), so it is not used.

When this bound does not fit a budget, the pipeline asks the first target's provider for the
count (:mod:`opsgate.metering.counting`) and reserves that count instead (``input_tokens``; it
includes what the provider adds, Anthropic's tool-use system prompt too), plus
:func:`count_margin`: Anthropic calls its count "an estimate" ("the actual number of input
tokens used when creating a message may differ by a small amount", token counting guide), so the
count alone is no bound; never more than the byte bound, which is one. A target that may serve
another model is not counted (the count is the requested model's, and another model's tokenizer
can need more tokens for the same text), see :meth:`opsgate.pipeline.Gateway.countable`.

A target is priced by ``prices.price_for``: for a :class:`~opsgate.metering.prices.PriceBook`,
per token kind the dearest of the target's model and every model the target may serve
(configured ``[may_serve]`` or seen), since a call is charged at the model that served it.

Money is reserved per attempt (:func:`attempt_worst_case_micro_usd`): the intent holds the first
attempt at the first target's price, and every further request (a retry after an answer that may
have been billed, a fallback to a dearer target, a schema-repair request, whose prompt is then
known exactly) first extends the hold (see :mod:`opsgate.pipeline`). The token rate limits hold
the answer and one repair request in tokens at admission (:func:`call_worst_case_tokens`), the
repair's note bounded by :data:`REPAIR_NOTE_ALLOWANCE_BYTES`.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from opsgate.metering.cost import worst_case_micro_usd
from opsgate.metering.prices import PriceSource
from opsgate.providers.base import CompletionRequest

PROMPT_OVERHEAD_TOKENS = 512
REPAIR_NOTE_ALLOWANCE_BYTES = 8192
COUNT_MARGIN_MIN_TOKENS = 64
COUNT_MARGIN_DIVISOR = 20
"""A provider's input count is reserved with ``max(count / 20, 64)`` tokens more (5 %, at least
64): :func:`count_margin`."""


def prompt_token_bound(request: CompletionRequest) -> int:
    """An upper bound on the input tokens ``request`` is billed for (see the module doc)."""
    size = len(request.system.encode()) + len(request.user.encode())
    if request.json_schema is not None:
        size += len(orjson.dumps(request.json_schema, option=orjson.OPT_INDENT_2))
    return size + PROMPT_OVERHEAD_TOKENS


def count_margin(counted: int) -> int:
    """The tokens reserved on top of a provider's input count of ``counted`` tokens: 5 %
    (rounded up), at least :data:`COUNT_MARGIN_MIN_TOKENS`. An engineering margin for a count the
    provider calls an estimate, not a bound it documents; a billed input beyond it is recorded
    and charged in full (docs/budgets.md, "What the worst case cannot bound")."""
    return max(-(-counted // COUNT_MARGIN_DIVISOR), COUNT_MARGIN_MIN_TOKENS)


def input_token_bound(request: CompletionRequest, input_tokens: int | None = None) -> int:
    """The input tokens one request of ``request`` is reserved for: :func:`prompt_token_bound`,
    or, when the provider counted ``input_tokens``, that count plus :func:`count_margin`, never
    more than the byte bound (which holds for every tokenizer of the three providers)."""
    bound = prompt_token_bound(request)
    if input_tokens is None:
        return bound
    return min(bound, input_tokens + count_margin(input_tokens))


def attempt_worst_case_micro_usd(
    request: CompletionRequest, model: str, prices: PriceSource, input_tokens: int | None = None,
) -> int:
    """The most one request of ``request`` to ``model`` (a ``prices`` key, ``provider/model`` for a
    :class:`~opsgate.metering.prices.PriceBook`) can cost, in integer micro-USD rounded up: the
    input bound (:func:`input_token_bound`: ``input_tokens`` when the provider counted them,
    see :class:`~opsgate.providers.base.InputCount`, plus a margin, else
    :func:`prompt_token_bound`) plus
    ``max_tokens`` (more when the target was seen to bill more output than its cap,
    ``prices.output_bound``) at the model's price. The input is priced without cache
    writes: opsgate's requests carry no ``cache_control`` mark, and Anthropic writes to its cache
    only what such a mark asks for (prompt caching docs; DeepSeek and Gemini cache implicitly and
    bill no writes, and a cache read is never dearer than input). Raises
    :class:`~opsgate.metering.prices.UnknownModelPrice` for a model without a price."""
    prompt = input_token_bound(request, input_tokens)
    output = prices.output_bound(model, request.max_tokens)
    return worst_case_micro_usd(prompt, output, prices.price_for(model), cache_writes=False)


def attempt_worst_cases_micro_usd(
    request: CompletionRequest, models: Sequence[str], prices: PriceSource
) -> list[int]:
    """:func:`attempt_worst_case_micro_usd` of ``request`` at each of ``models`` (in order), the
    prompt bound computed once (not at all for no model): the candidates a ``cheaper`` budget may
    send a call to."""
    if not models:
        return []
    prompt = prompt_token_bound(request)
    return [worst_case_micro_usd(prompt, prices.output_bound(m, request.max_tokens), prices.price_for(m),
                                 cache_writes=False)
            for m in models]


def call_worst_case_tokens(request: CompletionRequest) -> int:
    """The most tokens a governed call of ``request`` can be billed for: the answer and one
    repair request, each its prompt bound plus ``max_tokens`` (what a tokens-per-minute limit
    holds at admission)."""
    prompt = prompt_token_bound(request)
    return (prompt + request.max_tokens) + (prompt + REPAIR_NOTE_ALLOWANCE_BYTES + request.max_tokens)
