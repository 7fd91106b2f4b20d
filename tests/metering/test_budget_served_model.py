"""$0 overspend when a provider serves a dearer model than the one asked for (tester-wire F1).

A call is charged at the price of the model the provider says served it. The reservation of a
target therefore covers every model that target may serve: the requested model, the models
configured in ``[may_serve]`` and every model the target has been seen to serve (learned from
each answer in memory, and from the operation log at start-up). Over HTTP against the provider
sandboxes (``substitute:anthropic:claude-opus-4-1-20250805``: the Anthropic sandbox answers a
``claude-opus-5`` request as Claude Opus 4.1, $15/$75 per MTok against Opus 5's $5/$25):

- configured: a budget with room for one Opus 5 worst case (the byte bound) but not for an
  Opus 4.1 one refuses the call with 402 before anything is sent; with room, the call reserves at
  Opus 4.1's prices and its charge is within the reservation;
- never seen before: the first substituted call is reserved at Opus 5's price (nothing said
  otherwise) and charged its true Opus 4.1 cost; from then on the target's reservations cover
  Opus 4.1: the next call under a budget with room for one Opus 5 worst case only is refused with
  402, and after a restart the gateway still reserves at Opus 4.1's prices (the sandbox's short
  answer stays within the first reservation; tests/test_pipeline.py shows the one-time overspend
  of an answer that does not);
- the answer names the model that served it (``served_model``) beside the requested ``model``;
- :meth:`PriceBook.price_for` takes the dearer price per token kind over the target's models.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from tests.budgets import ADMIN
from tests.gateways import gateway_settings, running_gateway
from tests.paths import EXAMPLES

from opsgate.clock import SystemClock
from opsgate.config import Settings
from opsgate.metering.budgets import budget_statuses, set_budget
from opsgate.metering.cost import cost_micro_usd
from opsgate.metering.errors import UnknownModelPrice
from opsgate.metering.models import ANY, ai_operation_attempts, budget_reservations
from opsgate.metering.prices import PriceBook, PriceTable
from opsgate.metering.worstcase import attempt_worst_case_micro_usd
from opsgate.operations import get_operation
from opsgate.operations.privacy import PrivacyPolicy
from opsgate.providers.base import Usage
from opsgate.routing.effective import config_problems
from opsgate.security.auth import TokenService

OP = "email-classify"
BODY = {"raw": (EXAMPLES / "email-classify.eml").read_text()}
REQUESTED = "claude-opus-5"
SERVED = "claude-opus-4-1-20250805"
FAULTS = f"substitute:anthropic:{SERVED}"


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return gateway_settings(tmp_path, sandbox_faults=FAULTS,
                            routes={OP: {"chain": [f"anthropic/{REQUESTED}"], "max_attempts_per_target": 1}},
                            **overrides)


def _worst(model: str) -> int:
    """The byte-bound worst case of the call's request (as really sent) at ``model``'s price alone."""
    op = get_operation(OP)
    request = PrivacyPolicy().minimise(OP, op.prepare(op.Input.model_validate(BODY)).request)[0]
    return attempt_worst_case_micro_usd(request, f"anthropic/{model}", PriceBook(PriceTable.load()))


def _limit(gateway, limit: int) -> None:  # type: ignore[no-untyped-def]
    set_budget(gateway.runtime.ledger, SystemClock(), actor=ADMIN, user_id="alice", operation=ANY,
               period="day", limit_micro_usd=limit)


def _call(gateway) -> httpx.Response:  # type: ignore[no-untyped-def]
    token = TokenService(gateway.settings, SystemClock()).issue("alice", "user")
    return gateway.client.post(f"/v1/operations/{OP}", json=BODY, headers={"Authorization": f"Bearer {token}"})


def _held(gateway, request_id: str) -> int:  # type: ignore[no-untyped-def]
    r = budget_reservations.c
    with gateway.runtime.engine.connect() as conn:
        return conn.execute(select(r.worst_micro_usd).where(r.request_id == request_id)).scalar_one()


def _spent(gateway) -> int:  # type: ignore[no-untyped-def]
    [status] = budget_statuses(gateway.runtime.engine, SystemClock().now())
    assert status.reserved_micro_usd == 0
    return status.spent_micro_usd


def _true_cost(gateway, request_id: str) -> int:  # type: ignore[no-untyped-def]
    """The call's attempt row priced at the served model by hand (three times what the requested
    model's price would make it)."""
    a = ai_operation_attempts.c
    with gateway.runtime.engine.connect() as conn:
        [row] = conn.execute(select(ai_operation_attempts).where(a.request_id == request_id)).mappings().all()
    assert (row["model"], row["served_model"]) == (REQUESTED, SERVED)
    usage = Usage(input_tokens=row["input_tokens"], output_tokens=row["output_tokens"])
    price = PriceBook(PriceTable.load()).price_at("anthropic", SERVED, datetime.now(UTC)).price
    requested = PriceBook(PriceTable.load()).price_at("anthropic", REQUESTED, datetime.now(UTC)).price
    assert cost_micro_usd(usage, price) == row["cost_micro_usd"] > cost_micro_usd(usage, requested)
    return int(row["cost_micro_usd"])


def test_a_configured_substitute_is_reserved_so_the_budget_never_passes_its_limit(tmp_path: Path) -> None:
    settings = _settings(tmp_path, may_serve={f"anthropic/{REQUESTED}": [SERVED]})
    opus5, opus41 = _worst(REQUESTED), _worst(SERVED)
    assert opus5 < opus41
    with running_gateway(settings) as gateway:
        _limit(gateway, opus5)  # room for the call at Opus 5's price, none at Opus 4.1's
        refused = _call(gateway)
        assert refused.status_code == 402 and refused.json()["code"] == "budget_exceeded"
        assert _spent(gateway) == 0 and gateway.stats()["anthropic"]["requests"] == 0

        _limit(gateway, 10 * opus41)
        ok = _call(gateway)
        assert ok.status_code == 200, ok.text
        rid = ok.json()["request_id"]
        assert _held(gateway, rid) == opus41
        assert ok.json()["cost_micro_usd"] == _true_cost(gateway, rid) == _spent(gateway) <= opus41


def test_a_first_unseen_substitute_is_charged_in_full_then_reserved_also_after_a_restart(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    opus5, opus41 = _worst(REQUESTED), _worst(SERVED)
    with running_gateway(settings) as gateway:
        _limit(gateway, opus5)
        first = _call(gateway)
        assert first.status_code == 200, first.text
        body = first.json()
        assert (body["provider"], body["model"], body["served_model"]) == ("anthropic", REQUESTED, SERVED)
        assert _held(gateway, body["request_id"]) == opus5  # nothing said Opus 4.1 could answer
        cost = _true_cost(gateway, body["request_id"])  # at Opus 4.1's price, in full
        assert body["cost_micro_usd"] == cost == _spent(gateway)

        _limit(gateway, cost + opus5)  # room for one more call at Opus 5's price only
        second = _call(gateway)
        assert second.status_code == 402 and second.json()["code"] == "budget_exceeded"
        assert _spent(gateway) == cost and gateway.stats()["anthropic"]["requests"] == 1

    with running_gateway(settings) as gateway:  # a new process: learned from the operation log
        third = _call(gateway)
        assert third.status_code == 402 and third.json()["code"] == "budget_exceeded"
        _limit(gateway, cost + 10 * opus41)
        fourth = _call(gateway)
        assert fourth.status_code == 200, fourth.text
        assert _held(gateway, fourth.json()["request_id"]) == opus41
        assert _spent(gateway) == cost + _true_cost(gateway, fourth.json()["request_id"])


def test_the_reservation_price_is_the_dearest_per_token_kind_over_the_models_a_target_may_serve() -> None:
    table = PriceTable.load()
    plain = PriceBook(table)
    book = PriceBook(table, may_serve={"deepseek/deepseek-flash": ["deepseek-v4-pro"]})
    flash, pro = plain.price_for("deepseek/deepseek-flash"), plain.price_for("deepseek/deepseek-v4-pro")
    held = book.price_for("deepseek/deepseek-flash")
    assert held.model == "deepseek-flash"
    assert (held.input, held.output, held.cache_read) == (max(flash.input, pro.input), max(flash.output, pro.output),
                                                          max(flash.cache_read, pro.cache_read))
    assert held.output == pro.output > flash.output

    assert plain.price_for(f"anthropic/{REQUESTED}").output == Decimal(25)
    assert not plain.observe_served("anthropic", REQUESTED, None)
    assert not plain.observe_served("anthropic", REQUESTED, "claude-opus-5-20260724")  # a snapshot: itself
    assert not plain.observe_served("anthropic", REQUESTED, "claude-opus-9-unpriced")
    assert not plain.observe_served("anthropic", REQUESTED, "<invalid>")
    assert plain.price_for(f"anthropic/{REQUESTED}").output == Decimal(25)
    assert plain.observe_served("anthropic", REQUESTED, SERVED)
    assert not plain.observe_served("anthropic", REQUESTED, SERVED)
    assert plain.may_serve("anthropic", REQUESTED) == {SERVED}
    assert (plain.price_for(f"anthropic/{REQUESTED}").input,
            plain.price_for(f"anthropic/{REQUESTED}").output) == (Decimal(15), Decimal(75))
    assert plain.price_for("anthropic/claude-haiku-4-5").output < Decimal(75)  # per target, not global


def test_a_configured_substitute_without_a_price_refuses_start_up() -> None:
    settings = Settings(may_serve={"anthropic/claude-opus-5": ["claude-opus-9-unpriced"]})
    book = PriceBook.from_settings(settings)
    with pytest.raises(UnknownModelPrice):
        book.price_for("anthropic/claude-opus-5")
    problems = config_problems(settings, book, datetime.now(UTC), check_keys=False)
    assert problems == ["may_serve 'anthropic/claude-opus-5': 'claude-opus-9-unpriced' has no price "
                        "(add [prices.\"anthropic/claude-opus-9-unpriced\"] with input and output in USD "
                        "per million tokens)"]

