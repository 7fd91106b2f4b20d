"""Token usage to money, exactly.

A price in USD per million tokens is numerically a price in micro-USD per token, so the cost of a
call in micro-USD is ``sum(tokens_of_kind × price_of_kind)`` with no unit conversion at all.

Why Decimal and one rounding: prices such as $0.028/MTok have no exact binary-float form, and a
call's exact cost is usually a fraction of a micro-dollar (e.g. 3 DeepSeek cache-hit tokens cost
0.084 µUSD). The sum is therefore computed exactly in :mod:`decimal` and rounded **once**, half
up, to whole micro-USD. Rounding each field separately would let the rounding error grow with the
number of fields (up to ±2.5 µUSD per call over five fields) and make the result depend on how
usage was split; rounding once bounds the error of every call at ±0.5 µUSD, so a sum of n calls is
within n/2 µUSD of the exact bill. Half-up (not banker's) matches what a reader does by hand.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_UP, Context, Decimal

from opsgate.metering.prices import ModelPrice
from opsgate.providers.base import Usage

_BILLED = (
    ("input_tokens", "input"),
    ("output_tokens", "output"),
    ("cache_write_tokens", "cache_write"),
    ("cache_write_1h_tokens", "cache_write_1h"),
    ("cache_read_tokens", "cache_read"),
)
"""Usage field -> price field. ``reasoning_tokens`` is absent on purpose: it is a part of
``output_tokens`` (see :class:`opsgate.providers.base.Usage`) and is billed there."""

_EXACT = Context(prec=60)
"""Enough digits that products and sums of any realistic token counts and prices are exact."""


def exact_cost_micro_usd(usage: Usage, price: ModelPrice) -> Decimal:
    """The unrounded cost of ``usage`` at ``price`` in micro-USD (a Decimal, exact).

    Raises ``ValueError`` if a token count is negative or not an integer.
    """
    total = Decimal(0)
    for usage_field, price_field in _BILLED:
        tokens = getattr(usage, usage_field)
        if not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"Usage.{usage_field} must be an integer >= 0, got {tokens!r}")
        total = _EXACT.add(total, _EXACT.multiply(Decimal(tokens), getattr(price, price_field)))
    return total


def cost_micro_usd(usage: Usage, price: ModelPrice) -> int:
    """The cost of one call in integer micro-USD: the exact sum, rounded once, ROUND_HALF_UP.

    ``usage`` is a normalised :class:`~opsgate.providers.base.Usage`; ``price`` the model's
    :class:`~opsgate.metering.prices.ModelPrice`. Raises ``ValueError`` on a negative count.
    """
    return int(exact_cost_micro_usd(usage, price).to_integral_value(rounding=ROUND_HALF_UP))


def worst_case_micro_usd(
    input_tokens: int, max_tokens: int, price: ModelPrice, *, cache_writes: bool = True
) -> int:
    """An upper bound, in integer micro-USD rounded up, on what a call can cost.

    ``input_tokens`` is the prompt's size and ``max_tokens`` the output cap. Each input token is
    priced at the dearest input-side price of the model (uncached, 5-minute or 1-hour cache write,
    cache read), because the reservation must hold whatever the provider decides to cache; each
    output token at the output price. With ``cache_writes=False`` (a request that asks for no
    cache writes: Anthropic writes only what ``cache_control`` marks, the others cache implicitly
    and bill no writes) the write prices are left out. For budget reservations: reserve this,
    settle the real cost. Raises ``ValueError`` on a negative count.
    """
    if input_tokens < 0 or max_tokens < 0:
        raise ValueError("input_tokens and max_tokens must be >= 0")
    writes = (price.cache_write, price.cache_write_1h) if cache_writes else ()
    dearest_input = max(price.input, price.cache_read, *writes)
    total = _EXACT.add(
        _EXACT.multiply(Decimal(input_tokens), dearest_input),
        _EXACT.multiply(Decimal(max_tokens), price.output),
    )
    return int(total.to_integral_value(rounding=ROUND_CEILING))
