"""What the worst case must bound that the overspend audit after tester-wire F1 found it did
not: a provider's input count is an estimate, a count of the requested model does not bound a
substitute's input, and an answer can bill more output than its cap (Gemini's thoughts)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.budgets import ADMIN
from tests.paths import EXAMPLES

from opsgate.clock import ManualClock
from opsgate.metering.budgets import set_budget
from opsgate.metering.cost import cost_micro_usd, worst_case_micro_usd
from opsgate.metering.errors import BudgetExceeded
from opsgate.metering.models import ANY, budget_reservations
from opsgate.metering.prices import PriceBook, PriceTable
from opsgate.metering.worstcase import attempt_worst_case_micro_usd, count_margin, prompt_token_bound
from opsgate.operations import get_operation
from opsgate.providers.base import CompletionRequest, InputCount, Usage
from opsgate.testing import FAKE_MODEL, FakeProvider, gateway_settings, governed_gateway

CLASSIFY = {"raw": (EXAMPLES / "email-classify.eml").read_text()}
KEY = f"anthropic/{FAKE_MODEL}"


def test_a_counted_input_is_reserved_with_a_margin_never_above_the_byte_bound() -> None:
    """Anthropic: the count "should be considered an estimate ... the actual number of input
    tokens used when creating a message may differ by a small amount". A call counted at 1,000
    tokens and billed 1,010 cost more than a reservation of exactly 1,000 (the old code)."""
    request = get_operation("email-classify").prepare(
        get_operation("email-classify").Input.model_validate(CLASSIFY)).request
    prices = PriceBook(PriceTable.load())
    price = prices.price_for(KEY)
    held = attempt_worst_case_micro_usd(request, KEY, prices, 1_000)
    billed = Usage(input_tokens=1_010, output_tokens=request.max_tokens)
    assert cost_micro_usd(billed, price) <= held
    assert count_margin(1_000) == 64 and count_margin(10_000) == 500
    assert held == worst_case_micro_usd(1_064, request.max_tokens, price, cache_writes=False)
    # the margin never takes a count above the byte bound, which is a bound for every tokenizer
    bound = prompt_token_bound(request)
    assert attempt_worst_case_micro_usd(request, KEY, prices, bound) == attempt_worst_case_micro_usd(request, KEY, prices)


@dataclass
class CountingProvider(FakeProvider):
    """A :class:`FakeProvider` whose API counts input tokens (``count`` of them) and records each
    count request."""

    count: int = 100
    counted: list[CompletionRequest] | None = None

    async def count_tokens(self, request: CompletionRequest, model: str, timeout_s: float) -> InputCount:
        """Record ``request``; answer :attr:`count`."""
        self.counted = [*(self.counted or []), request]
        return InputCount(self.count)


@pytest.mark.parametrize("substitute", [False, True])
async def test_a_target_that_may_serve_another_model_is_not_reserved_at_its_count(
    tmp_path: Path, substitute: bool,
) -> None:
    """A budget with room for the counted worst case but not the byte bound: a target that may
    serve only its model is counted and admitted at the count; one configured to serve another
    model (whose tokenizer can need more tokens than the requested model's count) is not
    counted and the byte bound's 402 stands (the old code counted it and reserved the count)."""
    provider = CountingProvider(usage=Usage(input_tokens=100, output_tokens=50))
    may_serve = {KEY: ["claude-opus-4-1"]} if substitute else None
    async with governed_gateway(gateway_settings(tmp_path), provider, clock=ManualClock(),
                                may_serve=may_serve) as governed:
        request = get_operation("email-classify").prepare(
            get_operation("email-classify").Input.model_validate(CLASSIFY)).request
        book = PriceBook(PriceTable.load(), may_serve=may_serve)
        counted = attempt_worst_case_micro_usd(request, KEY, book, provider.count)
        byte_bound = attempt_worst_case_micro_usd(request, KEY, book)
        assert counted < byte_bound
        set_budget(governed.ledger, governed.clock, actor=ADMIN, user_id="alice", operation=ANY, period="day",
                   limit_micro_usd=(counted + byte_bound) // 2)
        call = governed.call("email-classify", CLASSIFY)
        if substitute:
            with pytest.raises(BudgetExceeded):
                await governed.gateway.govern(call)
            assert provider.counted is None and provider.requests == []
            return
        await governed.gateway.govern(call)
        assert provider.counted is not None and len(provider.counted) == 1
        with governed.engine.connect() as conn:
            held = conn.execute(select(budget_reservations.c.worst_micro_usd)).scalar_one()
        assert held == counted


async def test_a_target_that_bills_output_beyond_its_cap_is_reserved_for_it_from_then_on(tmp_path: Path) -> None:
    """Gemini bills thoughts as output (``candidatesTokenCount + thoughtsTokenCount``), and its
    thinking guide describes them as apart from ``maxOutputTokens``. An answer billed at ten
    times its cap costs more than the first call held (charged in full, never capped); from then
    on the target's reservations hold that ratio, so the next call is within its hold (the old
    code held ``max_tokens`` of output every time)."""
    provider = FakeProvider(name="gemini")
    async with governed_gateway(gateway_settings(tmp_path), provider, clock=ManualClock(),
                                model="gemini-3.8-flash") as governed:
        set_budget(governed.ledger, governed.clock, actor=ADMIN, user_id="alice", operation=ANY, period="day",
                   limit_micro_usd=10**9)

        def at_send(request: CompletionRequest) -> None:
            provider.usage = Usage(input_tokens=100, output_tokens=10 * request.max_tokens,
                                   reasoning_tokens=9 * request.max_tokens)

        provider.on_send = at_send
        first = await governed.govern("email-classify", CLASSIFY)
        second = await governed.govern("email-classify", CLASSIFY)

        with governed.engine.connect() as conn:
            held = dict(conn.execute(select(budget_reservations.c.request_id,
                                            budget_reservations.c.worst_micro_usd)).all())
        cap = provider.requests[0].max_tokens
        price = PriceBook(PriceTable.load()).price_at("gemini", "gemini-3.8-flash", governed.clock.now()).price
        cost = cost_micro_usd(Usage(input_tokens=100, output_tokens=10 * cap), price)
        assert first.cost_micro_usd == second.cost_micro_usd == cost
        assert held[first.request_id] < cost  # the first answer over its cap: recorded in full
        assert held[second.request_id] >= cost
