"""Gateway.govern without a server: the pipeline's promises, shown in-process with the fakes of
opsgate.testing (real SQLite database, real ledger writer, real metering, a fake provider)."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from opsgate import pipeline
from opsgate.metering.budgets import budget_statuses, set_budget
from opsgate.metering.cost import cost_micro_usd
from opsgate.metering.errors import BudgetExceeded
from opsgate.metering.models import ANY, ai_operation_attempts, budget_counters, budget_reservations
from opsgate.clock import ManualClock
from opsgate.metering.prices import PriceBook, PriceTable
from opsgate.metering.worstcase import attempt_worst_case_micro_usd, prompt_token_bound
from opsgate.operations import get_operation
from opsgate.operations.base import OFF_LOOP_BYTES, prepare_input
from opsgate.operations.errors import InvalidModelOutput
from opsgate.providers.base import CompletionRequest, FinishReason, Usage
from opsgate.providers.errors import IncompleteAnswer
from opsgate.routing.errors import NoUsableAnswer
from opsgate.store.models import ai_operation_log
from opsgate.testing import FAKE_MODEL, FakeProvider, GovernedGateway, gateway_settings, governed_gateway
from tests.budgets import ADMIN
from tests.paths import EXAMPLES

CLASSIFY = {"raw": (EXAMPLES / "email-classify.eml").read_text()}


async def test_the_intent_is_durable_before_the_first_byte_goes_to_a_provider(
    governed: GovernedGateway,
) -> None:
    set_budget(governed.ledger, governed.clock, actor=ADMIN, user_id=ANY, operation=ANY, period="day",
               limit_micro_usd=10**9)
    seen: list[list[tuple[str, int]]] = []

    def at_send(request: CompletionRequest) -> None:
        # read on a connection of its own: only committed rows are visible here
        entries = governed.entries()
        with governed.engine.connect() as conn:
            held = conn.execute(select(budget_reservations.c.request_id)).scalars().all()
        seen.append([(kind, len(held)) for kind, _ in entries])

    governed.provider.on_send = at_send
    call = governed.call("email-classify", CLASSIFY)
    outcome = await governed.gateway.govern(call)

    # the budget's own entry, then the intent and its reservation, committed, nothing else
    assert seen == [[("budget.set", 1), ("intent", 1)]]
    assert [kind for kind, _ in governed.entries(call.request_id)] == ["intent", "result"]
    assert outcome.provider == "anthropic" and outcome.model == FAKE_MODEL


async def test_a_402_leaves_no_intent_and_reaches_no_provider(governed: GovernedGateway) -> None:
    set_budget(governed.ledger, governed.clock, actor=ADMIN, user_id="alice", operation=ANY, period="day",
               limit_micro_usd=1)
    call = governed.call("email-classify", CLASSIFY)

    with pytest.raises(BudgetExceeded) as refused:
        await governed.gateway.govern(call)

    assert refused.value.status == 402 and refused.value.code == "budget_exceeded"
    assert [kind for kind, _ in governed.entries()] == ["budget.set"]  # nothing of the call
    assert governed.provider.requests == []
    with governed.engine.connect() as conn:
        assert conn.execute(select(ai_operation_log)).all() == []
        assert conn.execute(select(budget_reservations)).all() == []
        assert conn.execute(select(budget_counters)).all() == []  # the refused hold rolled back


async def test_a_repaired_call_pays_for_both_answers(governed: GovernedGateway) -> None:
    set_budget(governed.ledger, governed.clock, actor=ADMIN, user_id="alice", operation=ANY, period="day",
               limit_micro_usd=10**9)
    governed.provider.script = [{"category": "not a category"}]  # then a schema-valid answer
    call = governed.call("email-classify", CLASSIFY)

    outcome = await governed.gateway.govern(call)

    usage = governed.provider.usage
    one_answer = cost_micro_usd(usage, PriceTable.load().price_for(FAKE_MODEL))
    assert one_answer > 0
    assert len(governed.provider.requests) == 2
    first, repair = governed.provider.requests
    assert repair.user.startswith(first.user) and "did not match the required JSON schema" in repair.user
    assert outcome.usage == usage + usage == Usage(input_tokens=2_000, output_tokens=400)
    assert outcome.cost_micro_usd == 2 * one_answer
    [(_, result)] = [e for e in governed.entries(call.request_id) if e[0] == "result"]
    assert (result["status"], result["cost_micro_usd"], result["input_tokens"]) == ("ok", 2 * one_answer, 2_000)
    with governed.engine.connect() as conn:
        logged = conn.execute(select(ai_operation_log.c.cost_micro_usd, ai_operation_log.c.output_tokens)).one()
        spent = conn.execute(select(budget_counters.c.spent_micro_usd, budget_counters.c.reserved_micro_usd)).one()
    assert tuple(logged) == (2 * one_answer, 400)
    assert tuple(spent) == (2 * one_answer, 0)


async def test_a_repair_request_is_first_admitted_in_a_ledgered_extension(governed: GovernedGateway) -> None:
    set_budget(governed.ledger, governed.clock, actor=ADMIN, user_id="alice", operation=ANY, period="day",
               limit_micro_usd=10**9)
    governed.provider.script = [{"category": "not a category"}]  # then a schema-valid answer
    seen: list[list[str]] = []
    governed.provider.on_send = lambda request: seen.append([k for k, _ in governed.entries(call.request_id)])
    call = governed.call("email-classify", CLASSIFY)

    outcome = await governed.gateway.govern(call)

    assert seen == [["intent"], ["intent", "extend"]]  # the extension committed before the repair left
    [(_, extension)] = [e for e in governed.entries(call.request_id) if e[0] == "extend"]
    with governed.engine.connect() as conn:
        attempts = conn.execute(select(ai_operation_attempts.c.billing, ai_operation_attempts.c.cost_micro_usd)
                                .order_by(ai_operation_attempts.c.seq)).all()
        held = conn.execute(select(budget_reservations.c.worst_micro_usd)).scalar_one()
    assert held == extension["held_micro_usd"] > extension["extend_micro_usd"] > 0
    assert [tuple(a) for a in attempts] == [("reported", outcome.cost_micro_usd // 2)] * 2


async def test_a_402_on_an_extension_stops_the_call_and_settles_what_was_spent(
    governed: GovernedGateway,
) -> None:
    first = await _first_worst_case(governed)
    governed.provider.script = [{"category": "not a category"}]
    call = governed.call("email-classify", CLASSIFY)
    set_budget(governed.ledger, governed.clock, actor=ADMIN, user_id="alice", operation=ANY, period="day",
               limit_micro_usd=first + 1)  # the first request fits, the repair request cannot

    with pytest.raises(BudgetExceeded):
        await governed.gateway.govern(call)

    assert len(governed.provider.requests) == 2  # the probe's and this call's first: nothing more
    kinds = [k for k, _ in governed.entries(call.request_id)]
    assert kinds == ["intent", "result"]
    [(_, result)] = [e for e in governed.entries(call.request_id) if e[0] == "result"]
    one_answer = cost_micro_usd(governed.provider.usage, PriceTable.load().price_for(FAKE_MODEL))
    assert (result["error_code"], result["cost_micro_usd"]) == ("budget_exceeded", one_answer)
    assert _counters(governed, "alice") == (one_answer, 0)


async def test_an_answer_cut_at_its_cap_is_repaired_once_then_refused_within_its_hold(
    governed: GovernedGateway,
) -> None:
    """An answer that uses its whole ``max_tokens`` and still misses the schema (required fields
    missing; its stop reason says it ended, else it is an IncompleteAnswer, see the next tests)
    is billed as reported and gets the one repair request, missing too; the call ends with 502
    and both answers at the cap cost no more than the call held (operations/caps.py)."""
    set_budget(governed.ledger, governed.clock, actor=ADMIN, user_id="alice", operation=ANY, period="day",
               limit_micro_usd=10**9)
    cut = {"category": "work", "priority": "high"}
    governed.provider.script = [cut, cut]
    op = get_operation("email-classify")
    cap = op.prepare(op.Input.model_validate(CLASSIFY)).request.max_tokens  # the example's cap
    governed.provider.usage = Usage(input_tokens=1_000, output_tokens=cap)
    call = governed.call("email-classify", CLASSIFY)

    with pytest.raises(InvalidModelOutput):
        await governed.gateway.govern(call)

    first, repair = governed.provider.requests
    assert first.max_tokens == repair.max_tokens == cap
    one_answer = cost_micro_usd(governed.provider.usage, PriceTable.load().price_for(FAKE_MODEL))
    [(_, result)] = [e for e in governed.entries(call.request_id) if e[0] == "result"]
    assert (result["error_code"], result["cost_micro_usd"]) == ("provider_bad_response", 2 * one_answer)
    with governed.engine.connect() as conn:
        held = conn.execute(select(budget_reservations.c.worst_micro_usd)).scalar_one()
    assert _counters(governed, "alice") == (2 * one_answer, 0)
    assert 2 * one_answer <= held


async def test_a_used_answer_records_its_stop_reason_in_the_result_entry(governed: GovernedGateway) -> None:
    call = governed.call("email-classify", CLASSIFY)
    await governed.gateway.govern(call)
    [(_, result)] = [e for e in governed.entries(call.request_id) if e[0] == "result"]
    assert (result["status"], result["finish_reason"]) == ("ok", "stop")


@pytest.mark.parametrize("stop", [FinishReason.LENGTH, FinishReason.PAUSE, FinishReason.CONTEXT_EXCEEDED])
async def test_a_cut_off_answer_is_never_a_success_even_when_it_validates(
    governed: GovernedGateway, stop: FinishReason
) -> None:
    """tester-wire F2: a schema-valid answer whose generation stopped early (the provider's
    ``max_tokens``/``length``/``MAX_TOKENS``, a paused turn, the context window) came back 200.
    Here a provider returns it as a completion (the adapters raise IncompleteAnswer instead,
    tests/providers): the call ends 502 ``provider_bad_response``, billed as reported, and the
    result entry says why it stopped."""
    set_budget(governed.ledger, governed.clock, actor=ADMIN, user_id="alice", operation=ANY, period="day",
               limit_micro_usd=10**9)
    governed.provider.finish_reason = stop
    call = governed.call("email-classify", CLASSIFY)

    with pytest.raises(IncompleteAnswer) as info:
        await governed.gateway.govern(call)

    assert (info.value.status, info.value.code, info.value.finish_reason) == (502, "provider_bad_response", stop)
    assert len(governed.provider.requests) == 1  # not repaired: the same request stops at the same limit
    one_answer = cost_micro_usd(governed.provider.usage, PriceTable.load().price_for(FAKE_MODEL))
    [(_, result)] = [e for e in governed.entries(call.request_id) if e[0] == "result"]
    assert (result["status"], result["error_code"], result["finish_reason"], result["cost_micro_usd"]) == (
        "error", "provider_bad_response", stop.value, one_answer)
    assert _counters(governed, "alice") == (one_answer, 0)


async def test_a_chain_of_cut_off_answers_is_a_bad_response_recorded_with_its_stop_reason(
    governed: GovernedGateway,
) -> None:
    """tester-wire F2/F10: the adapters' IncompleteAnswer (billed at its reported usage) ends a
    one-target chain as 502 ``provider_bad_response``, not 503 "No AI provider could answer";
    the attempt row and the result entry say the answer was cut off."""
    set_budget(governed.ledger, governed.clock, actor=ADMIN, user_id="alice", operation=ANY, period="day",
               limit_micro_usd=10**9)
    cut = IncompleteAnswer("anthropic", FinishReason.LENGTH, "max_tokens")
    cut.usage = governed.provider.usage
    governed.provider.script = [cut]
    call = governed.call("email-classify", CLASSIFY)

    with pytest.raises(NoUsableAnswer) as info:
        await governed.gateway.govern(call)

    assert (info.value.status, info.value.code) == (502, "provider_bad_response")
    assert info.value.detail == "the answer stopped before it was complete (max_tokens)"
    one_answer = cost_micro_usd(governed.provider.usage, PriceTable.load().price_for(FAKE_MODEL))
    [(_, result)] = [e for e in governed.entries(call.request_id) if e[0] == "result"]
    assert (result["error_code"], result["finish_reason"], result["cost_micro_usd"]) == (
        "provider_bad_response", "length", one_answer)
    with governed.engine.connect() as conn:
        rows = conn.execute(select(ai_operation_attempts.c.outcome, ai_operation_attempts.c.billing)).all()
    assert [tuple(r) for r in rows] == [("incomplete_answer", "reported")]


def _counters(governed: GovernedGateway, user: str) -> tuple[int, int]:
    """(spent, reserved) of ``user``'s day budget."""
    [status] = [s for s in budget_statuses(governed.engine, governed.clock.now())
                if s.budget.user_id == user]
    return status.spent_micro_usd, status.reserved_micro_usd


async def _first_worst_case(governed: GovernedGateway) -> int:
    """The worst case the intent holds for CLASSIFY (measured with a budget that admits it)."""
    set_budget(governed.ledger, governed.clock, actor=ADMIN, user_id="probe", operation=ANY, period="day",
               limit_micro_usd=10**9)
    await governed.govern("email-classify", CLASSIFY, user="probe")
    [(_, intent)] = [e for e in governed.entries() if e[0] == "intent"]
    with governed.engine.connect() as conn:
        return conn.execute(select(budget_reservations.c.worst_micro_usd).where(
            budget_reservations.c.request_id == intent["request_id"])).scalar_one()


@pytest.mark.parametrize("op_id, body, off_loop", [
    ("email-classify", CLASSIFY, False),  # the hot path: no thread hop
    ("email-classify", {"raw": CLASSIFY["raw"] + "\nmore text" * (OFF_LOOP_BYTES // 10)}, True),
    ("calendar-prep", {"ics": (EXAMPLES / "calendar-prep.ics").read_text()}, True),  # any calendar
])
async def test_a_body_is_prepared_off_the_event_loop_from_its_operations_size(
    governed: GovernedGateway, monkeypatch: pytest.MonkeyPatch, op_id: str, body: dict[str, str], off_loop: bool,
) -> None:
    """Tester A F1: the synchronous validate/prepare ran inside ``async def govern``, so a long
    parse held the event loop and every other request with it. Off the loop it runs in the
    gateway's own pool, not the loop's default executor that the control plane shares."""
    threads: list[str] = []

    def recorded(*args: object) -> object:
        threads.append(threading.current_thread().name)
        return prepare_input(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "prepare_input", recorded)
    set_budget(governed.ledger, governed.clock, actor=ADMIN, user_id=ANY, operation=ANY, period="day",
               limit_micro_usd=10**9)
    await governed.govern(op_id, body)
    assert threads == ["opsgate-prepare_0" if off_loop else threading.current_thread().name]
    assert get_operation(op_id).off_loop_bytes == (0 if op_id.startswith("calendar") else OFF_LOOP_BYTES)


# -- a provider serving a dearer model than the one asked for (tester-wire F1) -------------------

DEARER = "claude-opus-4-1-20250805"  # $15/$75 per MTok, three times FAKE_MODEL's $5/$25


def _dearer_answers(governed: GovernedGateway) -> int:
    """Make every answer Claude Opus 4.1's, billed its whole output cap; returns the byte-bound
    worst case of CLASSIFY at FAKE_MODEL's price (what the old reservation held)."""
    op = get_operation("email-classify")
    prepared, _ = governed.gateway.minimise(op, op.prepare(op.Input.model_validate(CLASSIFY)))
    governed.provider.served_model = DEARER
    governed.provider.usage = Usage(input_tokens=1_000, output_tokens=prepared.request.max_tokens)
    return attempt_worst_case_micro_usd(prepared.request, f"anthropic/{FAKE_MODEL}", PriceBook(PriceTable.load()))


def _dearer_cost(governed: GovernedGateway) -> int:
    """What one answer costs at the served model's (Opus 4.1's) price."""
    return cost_micro_usd(governed.provider.usage, PriceBook(PriceTable.load()).price_for(f"anthropic/{DEARER}"))


async def test_concurrent_calls_served_by_a_configured_dearer_model_never_pass_the_limit(
    tmp_path: Path, fake_provider: FakeProvider, manual_clock: ManualClock,
) -> None:
    async with governed_gateway(gateway_settings(tmp_path), fake_provider, clock=manual_clock,
                                may_serve={f"anthropic/{FAKE_MODEL}": [DEARER]}) as governed:
        worst = _dearer_answers(governed)
        cost = _dearer_cost(governed)
        assert cost > worst  # each answer costs more than the requested model's worst case
        limit = 4 * cost
        set_budget(governed.ledger, governed.clock, actor=ADMIN, user_id="alice", operation=ANY, period="day",
                   limit_micro_usd=limit)

        results = await asyncio.gather(*(governed.govern("email-classify", CLASSIFY) for _ in range(12)),
                                       return_exceptions=True)

        served = [r for r in results if isinstance(r, pipeline.Outcome)]
        assert all(isinstance(r, (pipeline.Outcome, BudgetExceeded)) for r in results)
        assert served and {(o.model, o.served_model, o.cost_micro_usd) for o in served} == {(FAKE_MODEL, DEARER, cost)}
        spent, reserved = _counters(governed, "alice")
        assert (spent, reserved) == (len(served) * cost, 0) and spent <= limit
        with governed.engine.connect() as conn:
            held = conn.execute(select(budget_reservations.c.worst_micro_usd)).scalars().all()
        assert held and min(held) >= cost


async def test_an_unseen_dearer_model_overspends_once_then_every_reservation_covers_it(
    governed: GovernedGateway,
) -> None:
    worst = _dearer_answers(governed)
    cost = _dearer_cost(governed)
    set_budget(governed.ledger, governed.clock, actor=ADMIN, user_id="alice", operation=ANY, period="day",
               limit_micro_usd=worst)  # room for one call at the requested model's price

    first = await governed.govern("email-classify", CLASSIFY)
    assert (first.model, first.served_model, first.cost_micro_usd) == (FAKE_MODEL, DEARER, cost)
    assert _counters(governed, "alice") == (cost, 0) and cost > worst  # the true cost, over the limit

    set_budget(governed.ledger, governed.clock, actor=ADMIN, user_id="alice", operation=ANY, period="day",
               limit_micro_usd=cost + worst)  # room again for one call at the requested model's price
    with pytest.raises(BudgetExceeded):
        await governed.govern("email-classify", CLASSIFY)
    assert len(governed.provider.requests) == 1 and _counters(governed, "alice") == (cost, 0)


async def test_a_repair_sent_just_before_a_peak_window_is_metered_within_its_hold(tmp_path: Path) -> None:
    """deepseek-flash (genai-prices) doubles at 01:00 UTC on weekdays. The first answer (at its
    whole prompt bound and output cap, missing the schema) comes at 00:59:50, off-peak; the
    repair is admitted then too, and answered at 01:00:05. The call is metered at the peak price,
    both answers; the extension before the repair must hold that (it priced the first answer at
    00:59:50 only, so the call cost more than its hold: an overspend at a budget's edge)."""
    clock = ManualClock(datetime(2026, 12, 3, 0, 59, 50, tzinfo=UTC))  # a Thursday
    provider = FakeProvider(name="deepseek")
    async with governed_gateway(gateway_settings(tmp_path), provider, clock=clock,
                                model="deepseek-flash") as governed:
        set_budget(governed.ledger, clock, actor=ADMIN, user_id="alice", operation=ANY, period="day",
                   limit_micro_usd=10**9)
        provider.script = [{"category": "work", "priority": "high"}]  # misses fields: one repair

        def at_send(request: CompletionRequest) -> None:
            provider.usage = Usage(input_tokens=prompt_token_bound(request), output_tokens=request.max_tokens)
            if len(provider.requests) == 2:
                clock.advance(15)  # the repair is answered at 01:00:05

        provider.on_send = at_send
        call = governed.call("email-classify", CLASSIFY)
        outcome = await governed.gateway.govern(call)

        peak = PriceBook(PriceTable.load()).price_at("deepseek", "deepseek-flash", clock.now()).price
        assert (peak.input, peak.output) == (Decimal("0.3"), Decimal("1.2"))
        first, repair = provider.requests
        answers = [Usage(input_tokens=prompt_token_bound(r), output_tokens=r.max_tokens) for r in (first, repair)]
        cost = sum(cost_micro_usd(u, peak) for u in answers)
        assert outcome.cost_micro_usd == cost
        with governed.engine.connect() as conn:
            held = conn.execute(select(budget_reservations.c.worst_micro_usd)).scalar_one()
        assert cost <= held
        assert _counters(governed, "alice") == (cost, 0)
