"""A fallback within one routing call is admitted on what the call already owes, through a real
in-process gateway (SQLite, the ledger writer, metering) and the fake provider.

The first target's answer is cut off (:class:`IncompleteAnswer`, billed at the usage it reports)
and the router falls back to the second target in the same routing call. Before that second
request leaves, ``Gateway.admit`` must count the cut answer's charge, as reported and priced (not
the first request's worst case, which a dearer model serving it exceeds):

- with room, one ledger ``extend`` entry raises the hold to the cut answer's charge plus the
  fallback's worst case, committed before the fallback is sent;
- without room for that, the call stops with 402 before the fallback is sent, and what it spent
  stays within the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy import select

from opsgate.metering.budgets import budget_statuses, set_budget
from opsgate.metering.cost import cost_micro_usd
from opsgate.metering.errors import BudgetExceeded
from opsgate.metering.models import ANY, ai_operation_attempts, budget_reservations
from opsgate.metering.prices import PriceBook, PriceTable
from opsgate.metering.worstcase import attempt_worst_case_micro_usd, prompt_token_bound
from opsgate.operations import get_operation
from opsgate.providers.base import CompletionRequest, FinishReason, Usage
from opsgate.providers.errors import IncompleteAnswer
from opsgate.rollout.variants import default_book
from opsgate.routing.policy import RoutePolicy, Target
from opsgate.testing import FAKE_MODEL, GovernedGateway
from tests.budgets import ADMIN
from tests.paths import EXAMPLES

OP = "email-classify"
CLASSIFY = {"raw": (EXAMPLES / "email-classify.eml").read_text()}
FALLBACK = "claude-sonnet-4"  # $3/$15 per MTok at any prompt length
DEARER = "claude-opus-4-1-20250805"  # $15/$75 per MTok, three times FAKE_MODEL's $5/$25


@dataclass(frozen=True)
class Costs:
    """Micro-USD of one call: the worst case of its request at each target's price, the cut
    answer's charge (``cut``) and the fallback's answer's (``served``)."""

    first_worst: int
    fallback_worst: int
    cut: int
    served: int


def _cut_then_fallback(governed: GovernedGateway, served_model: str | None) -> Costs:
    """Route OP over FAKE_MODEL then FALLBACK (one attempt each); script a first answer cut at
    its ``max_tokens`` (1,000 input tokens, below the prompt's byte bound, and the whole cap
    billed; answered by ``served_model``, ``None``: the model asked for), then a fallback answer
    billed its whole prompt bound and cap. Returns the call's costs."""
    chain = (Target("anthropic", FAKE_MODEL), Target("anthropic", FALLBACK))
    governed.gateway.variants = default_book({OP: RoutePolicy(chain, timeout_s=5.0, max_attempts_per_target=1,
                                                              max_retry_wait_s=0.0)})
    op = get_operation(OP)
    request = governed.gateway.minimise(op, op.prepare(op.Input.model_validate(CLASSIFY)))[0].request
    whole = Usage(input_tokens=prompt_token_bound(request), output_tokens=request.max_tokens)
    billed = Usage(input_tokens=1_000, output_tokens=request.max_tokens)
    cut = IncompleteAnswer("anthropic", FinishReason.LENGTH, "max_tokens")
    cut.usage, cut.served_model = billed, served_model
    governed.provider.script = [cut]
    governed.provider.usage = whole
    book = PriceBook(PriceTable.load(), now=governed.clock.now)  # the gateway's prices
    return Costs(
        first_worst=attempt_worst_case_micro_usd(request, f"anthropic/{FAKE_MODEL}", book),
        fallback_worst=attempt_worst_case_micro_usd(request, f"anthropic/{FALLBACK}", book),
        cut=cost_micro_usd(billed, book.price_for(f"anthropic/{served_model or FAKE_MODEL}")),
        served=cost_micro_usd(whole, book.price_for(f"anthropic/{FALLBACK}")),
    )


def _budget(governed: GovernedGateway, limit: int) -> None:
    set_budget(governed.ledger, governed.clock, actor=ADMIN, user_id="alice", operation=ANY, period="day",
               limit_micro_usd=limit)


def _counters(governed: GovernedGateway) -> tuple[int, int]:
    """(spent, reserved) of alice's day budget, micro-USD."""
    [status] = budget_statuses(governed.engine, governed.clock.now())
    return status.spent_micro_usd, status.reserved_micro_usd


def _attempt_rows(governed: GovernedGateway) -> list[tuple[str, str, str, int]]:
    t = ai_operation_attempts.c
    with governed.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(t.model, t.outcome, t.billing, t.cost_micro_usd).order_by(t.seq))]


@pytest.mark.parametrize("served_model", [None, DEARER], ids=["requested-model", "dearer-model"])
async def test_a_fallback_after_a_billed_cut_answer_holds_that_charge_plus_its_own_worst_case(
    governed: GovernedGateway, served_model: str | None,
) -> None:
    """The cut answer's charge is below its request's worst case when the model asked for
    answered it, and above it when a dearer model did: either way the hold before the fallback
    is that charge plus the fallback's worst case, not the first request's worst case."""
    costs = _cut_then_fallback(governed, served_model)
    assert (costs.cut < costs.first_worst) if served_model is None else (costs.cut > costs.first_worst)
    _budget(governed, 10**9)
    seen: list[list[str]] = []

    def at_send(request: CompletionRequest) -> None:
        seen.append([kind for kind, _ in governed.entries(call.request_id)])

    governed.provider.on_send = at_send
    call = governed.call(OP, CLASSIFY)
    outcome = await governed.gateway.govern(call)

    assert (outcome.model, outcome.cost_micro_usd) == (FALLBACK, costs.cut + costs.served)
    assert seen == [["intent"], ["intent", "extend"]]  # the extension committed before the fallback left
    [(_, extension)] = [e for e in governed.entries(call.request_id) if e[0] == "extend"]
    held = costs.cut + costs.fallback_worst
    assert (extension["target"], extension["extend_micro_usd"], extension["held_micro_usd"]) == (
        f"anthropic/{FALLBACK}", held - costs.first_worst, held)
    with governed.engine.connect() as conn:
        assert conn.execute(select(budget_reservations.c.worst_micro_usd)).scalar_one() == held
    assert _attempt_rows(governed) == [(FAKE_MODEL, "incomplete_answer", "reported", costs.cut),
                                       (FALLBACK, "ok", "reported", costs.served)]
    assert _counters(governed) == (costs.cut + costs.served, 0)


async def test_a_fallback_the_budget_cannot_hold_after_a_dearer_cut_answer_is_refused_before_it_leaves(
    governed: GovernedGateway,
) -> None:
    """The limit has room for the first request's worst case plus the fallback's, and for the
    cut answer's charge, but not for that charge plus the fallback's worst case: counting the
    first request at its worst case would send the fallback and overspend; the call stops with
    402 after the one request, charged that answer, within the limit."""
    costs = _cut_then_fallback(governed, DEARER)
    limit = costs.cut + costs.fallback_worst - 1
    assert costs.first_worst + costs.fallback_worst <= limit and costs.cut + costs.served > limit
    _budget(governed, limit)
    call = governed.call(OP, CLASSIFY)

    with pytest.raises(BudgetExceeded) as refused:
        await governed.gateway.govern(call)

    assert (refused.value.status, refused.value.code) == (402, "budget_exceeded")
    assert len(governed.provider.requests) == 1  # the fallback never left
    assert [k for k, _ in governed.entries(call.request_id)] == ["intent", "result"]
    [(_, result)] = [e for e in governed.entries(call.request_id) if e[0] == "result"]
    assert (result["error_code"], result["cost_micro_usd"]) == ("budget_exceeded", costs.cut)
    assert _attempt_rows(governed) == [(FAKE_MODEL, "incomplete_answer", "reported", costs.cut)]
    assert _counters(governed) == (costs.cut, 0) and costs.cut <= limit
