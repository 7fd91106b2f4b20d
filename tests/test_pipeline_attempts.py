"""A failed call's record (tester-wire F3, F5), through a real in-process gateway (SQLite, the
ledger writer, metering) and the fake provider:

- a client that goes away stops the call before its next request (here the schema repair): the
  call ends ``client_closed`` (499) in its ``result`` entry and log row, what it spent is charged
  and nothing stays reserved;
- the ``result`` entry of a failed call that was charged names the last billed request's
  provider, model, served model and price (source and version), as its attempt row does.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from opsgate.metering.budgets import set_budget
from opsgate.metering.cost import cost_micro_usd
from opsgate.metering.models import ANY, ai_operation_attempts, budget_reservations
from opsgate.metering.prices import PriceBook, PriceTable
from opsgate.providers.base import Usage
from opsgate.providers.errors import ConnectionFailed, ContentFiltered
from opsgate.routing.errors import AllProvidersFailed, ClientClosed
from opsgate.store.models import ai_operation_log
from opsgate.testing import FAKE_MODEL, GovernedGateway
from tests.budgets import ADMIN
from tests.paths import EXAMPLES

CLASSIFY = {"raw": (EXAMPLES / "email-classify.eml").read_text()}


class Leaving:
    """A :class:`~opsgate.routing.router.Cancel` whose caller leaves when told."""

    def __init__(self) -> None:
        self.left = asyncio.Event()

    async def gone(self) -> bool:
        return self.left.is_set()

    async def wait_gone(self) -> None:
        await self.left.wait()


def _budget(governed: GovernedGateway) -> None:
    set_budget(governed.ledger, governed.clock, actor=ADMIN, user_id="alice", operation=ANY, period="day",
               limit_micro_usd=10**9)


def _result(governed: GovernedGateway, request_id: str) -> dict[str, Any]:
    [(_, result)] = [e for e in governed.entries(request_id) if e[0] == "result"]
    return result


def _attempt_rows(governed: GovernedGateway) -> list[tuple[Any, ...]]:
    t = ai_operation_attempts.c
    with governed.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(t.provider, t.model, t.served_model, t.outcome, t.billing, t.cost_micro_usd).order_by(t.seq))]


def _named(result: dict[str, Any]) -> tuple[Any, ...]:
    return (result["provider"], result["model"], result["served_model"], result["price_source"],
            result["price_version"])


def _price(governed: GovernedGateway) -> tuple[str, str]:
    found = PriceBook(PriceTable.load(), now=governed.clock.now).lookup("anthropic", FAKE_MODEL, governed.clock.now())
    assert found is not None
    return found.source, found.version


async def test_a_client_gone_before_the_repair_request_ends_the_call_client_closed_and_settled(
    governed: GovernedGateway,
) -> None:
    _budget(governed)
    leaving = Leaving()
    governed.provider.script = [{"category": "not a category"}]  # would get a repair request
    governed.provider.on_send = lambda request: leaving.left.set()  # the client leaves meanwhile
    call = governed.call("email-classify", CLASSIFY)
    call.cancel = leaving

    with pytest.raises(ClientClosed) as closed:
        await governed.gateway.govern(call)

    assert (closed.value.code, closed.value.status) == ("client_closed", 499)
    assert len(governed.provider.requests) == 1  # no repair request left
    one_answer = cost_micro_usd(governed.provider.usage, PriceTable.load().price_for(FAKE_MODEL))
    result = _result(governed, call.request_id)
    assert (result["status"], result["error_code"], result["cost_micro_usd"]) == ("error", "client_closed", one_answer)
    assert _named(result) == ("anthropic", FAKE_MODEL, FAKE_MODEL, *_price(governed))
    with governed.engine.connect() as conn:
        logged = conn.execute(select(ai_operation_log.c.error_code, ai_operation_log.c.cost_micro_usd)).one()
        reservation = conn.execute(select(budget_reservations.c.state)).scalar_one()
    assert tuple(logged) == ("client_closed", one_answer)
    assert reservation == "settled"
    assert _attempt_rows(governed) == [("anthropic", FAKE_MODEL, None, "ok", "reported", one_answer)]


async def test_a_refusal_that_reported_usage_names_its_provider_model_and_price(governed: GovernedGateway) -> None:
    _budget(governed)
    refusal = ContentFiltered("anthropic", "the provider declined", http_status=200)
    refusal.usage = Usage(input_tokens=1_000, output_tokens=30)
    governed.provider.script = [refusal]
    call = governed.call("email-classify", CLASSIFY)

    with pytest.raises(ContentFiltered):
        await governed.gateway.govern(call)

    cost = cost_micro_usd(refusal.usage, PriceTable.load().price_for(FAKE_MODEL))
    result = _result(governed, call.request_id)
    assert (result["error_code"], result["cost_micro_usd"], result["input_tokens"]) == ("content_filtered", cost, 1_000)
    assert _named(result) == ("anthropic", FAKE_MODEL, FAKE_MODEL, *_price(governed))
    assert _attempt_rows(governed) == [("anthropic", FAKE_MODEL, None, "content_filtered", "reported", cost)]


async def test_a_body_cut_after_its_200_names_the_estimated_request_and_its_price(governed: GovernedGateway) -> None:
    _budget(governed)
    governed.provider.script = [ConnectionFailed("anthropic", "answer cut (ClientPayloadError)", http_status=200)]
    call = governed.call("email-classify", CLASSIFY)

    with pytest.raises(AllProvidersFailed):
        await governed.gateway.govern(call)

    [row] = _attempt_rows(governed)
    assert row[:5] == ("anthropic", FAKE_MODEL, None, "connection_failed", "estimated") and row[5] > 0
    result = _result(governed, call.request_id)
    assert (result["error_code"], result["cost_micro_usd"]) == ("provider_unavailable", row[5])
    assert _named(result) == ("anthropic", FAKE_MODEL, FAKE_MODEL, *_price(governed))

