"""Shadow calls through the real pipeline (issue 17, item 4), in-process: a real SQLite database,
ledger writer, metering and toggle snapshot; the live variant answers from one fake provider, the
candidate from another whose answer waits on an event. The user's answer never waits for the shadow
call; shadow calls are ledgered before they leave, reserved against the ``shadow`` budget scope and
refused (not queued) when it is spent, and logged marked ``shadow``; agreement and cost are kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from opsgate.clock import ManualClock
from opsgate.config import VariantConfig
from opsgate.ledger.writer import Ledger
from opsgate.metering.budgets import budget_statuses, set_budget
from opsgate.metering.models import ANY, SHADOW
from opsgate.metering.prices import PriceBook, PriceTable
from opsgate.metering.service import build_metering
from opsgate.operations import OPERATIONS, prompt_catalogue
from opsgate.pipeline import Gateway, shadow_request_id
from opsgate.providers.base import Completion, CompletionRequest
from opsgate.rollout.controller import Plan, Stage
from opsgate.rollout.models import shadow_calls
from opsgate.rollout.service import RolloutService
from opsgate.rollout.toggles import ToggleSnapshot
from opsgate.rollout.variants import VariantBook, build_book
from opsgate.routing.policy import RoutePolicy, Target
from opsgate.routing.router import Router
from opsgate.security.auth import TokenService
from opsgate.store.db import make_engine, upgrade
from opsgate.store.models import ai_operation_log
from opsgate.testing import FAKE_MODEL, FakeProvider, GovernedGateway, gateway_settings
from tests.budgets import ADMIN
from tests.paths import EXAMPLES

OP = "email-classify"
CLASSIFY = {"raw": (EXAMPLES / "email-classify.eml").read_text()}
PLAN = Plan((Stage(5, 3600), Stage(100, 3600)), 3600)
ANSWER = {"category": "work", "priority": "high", "needs_reply": True, "confidence": 0.9, "reason": "a"}


@dataclass
class HeldProvider(FakeProvider):
    """The candidate's provider: each request is recorded, then its answer waits for ``release``."""

    sent: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def complete(self, request: CompletionRequest, model: str, timeout_s: float) -> Completion:
        """Record and signal ``sent``, wait for ``release``, then answer like a FakeProvider."""
        self.sent.set()
        await self.release.wait()
        return await super().complete(request, model, timeout_s)


@dataclass
class Shadowed:
    """A gateway whose ``email-classify`` rollout is in its shadow stage at ``percent``."""

    governed: GovernedGateway
    rollout: RolloutService
    candidate: HeldProvider

    async def call(self, user: str = "alice") -> tuple[str, dict[str, Any]]:
        """One live call; its request id and output."""
        call = self.governed.call(OP, CLASSIFY, user=user)
        outcome = await self.governed.gateway.govern(call)
        return call.request_id, outcome.output

    def shadow_rows(self) -> list[dict[str, Any]]:
        with self.governed.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(shadow_calls)).mappings()]

    def log_rows(self) -> list[dict[str, Any]]:
        with self.governed.engine.connect() as conn:
            query = select(ai_operation_log.c.request_id, ai_operation_log.c.variant, ai_operation_log.c.shadow,
                           ai_operation_log.c.status, ai_operation_log.c.cost_micro_usd)
            return [dict(r) for r in conn.execute(query).mappings()]


@pytest.fixture
async def shadowed(tmp_path: Path) -> AsyncIterator[Shadowed]:
    clock = ManualClock()
    settings = gateway_settings(tmp_path, variants={OP: {"cand": VariantConfig(chain=("deepseek/deepseek-chat",))}})
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    ledger = Ledger(engine, clock)
    ledger.start()
    live, candidate = FakeProvider(script=[ANSWER] * 50), HeldProvider(name="deepseek")
    policy = RoutePolicy(chain=(Target("anthropic", FAKE_MODEL),), timeout_s=5.0, max_attempts_per_target=1,
                         max_retry_wait_s=0.0)
    book = build_book(settings, {op: policy for op in OPERATIONS}, prompt_catalogue())
    prices = PriceBook(PriceTable.load(), now=clock.now)
    toggles = ToggleSnapshot(engine, clock, refresh_s=0)
    rollout = RolloutService(engine, ledger, clock, toggles, variants=book)
    rollout.ensure_toggles(OPERATIONS)
    rollout.enable_for_sandbox()
    tokens = TokenService(settings, clock)
    gateway = Gateway(tokens=tokens, ledger=ledger, router=Router({"anthropic": live, "deepseek": candidate}, clock),
                      policies={op: policy for op in OPERATIONS}, prices=prices, clock=clock,
                      metering=build_metering(settings, engine, clock, prices, book.chains()),
                      toggles=toggles, variants=book)
    rollout.start_rollout([OP], PLAN, "alice", variant="cand", shadow_percent=100)
    try:
        yield Shadowed(GovernedGateway(gateway, engine, ledger, tokens, clock, live), rollout, candidate)
    finally:
        candidate.release.set()
        await gateway.drain_shadows()
        ledger.close()
        engine.dispose()


def _budget(s: Shadowed, limit: int, *, operation: str = SHADOW) -> None:
    set_budget(s.governed.ledger, s.governed.clock, actor=ADMIN, user_id=ANY, operation=operation, period="day",
               limit_micro_usd=limit)


async def test_the_users_answer_does_not_wait_for_the_shadow_call(shadowed: Shadowed) -> None:
    _budget(shadowed, 10**9)
    request_id, output = await shadowed.call()

    # the user has the answer; the shadow call is still blocked inside the candidate's provider
    assert output["category"] == "work"
    await asyncio.wait_for(shadowed.candidate.sent.wait(), 30)
    assert not shadowed.candidate.release.is_set()
    assert shadowed.shadow_rows() == []
    assert [(r["request_id"], r["shadow"]) for r in shadowed.log_rows()] == [(request_id, False)]

    shadowed.candidate.release.set()
    await shadowed.governed.gateway.drain_shadows()
    [row] = shadowed.shadow_rows()
    assert (row["request_id"], row["live_request_id"], row["status"]) == (shadow_request_id(request_id), request_id, "ok")


async def test_shadow_calls_are_ledgered_before_they_leave_and_logged_marked_shadow(shadowed: Shadowed) -> None:
    _budget(shadowed, 10**9)
    seen: list[list[tuple[str, Any]]] = []
    shadowed.candidate.on_send = lambda request: seen.append(
        [(k, p.get("shadow")) for k, p in shadowed.governed.entries(shadow_request_id(request_id))])
    shadowed.candidate.release.set()
    request_id, _ = await shadowed.call()
    await shadowed.governed.gateway.drain_shadows()

    assert seen == [[("intent", True)]]  # durable, marked shadow, before the request left
    shadow_id = shadow_request_id(request_id)
    entries = shadowed.governed.entries(shadow_id)
    assert [(k, p.get("shadow"), p.get("shadow_of")) for k, p in entries] == [
        ("intent", True, request_id), ("result", True, None)]
    assert entries[0][1]["variant"] == "cand" and entries[0][1]["policy"] == ["deepseek/deepseek-chat"]
    assert [k for k, _ in shadowed.governed.entries(request_id)] == ["intent", "result"]
    logged = {r["request_id"]: r for r in shadowed.log_rows()}
    assert (logged[request_id]["shadow"], logged[request_id]["variant"]) == (False, "default")
    assert (logged[shadow_id]["shadow"], logged[shadow_id]["variant"], logged[shadow_id]["status"]) == (
        True, "cand", "ok")


async def test_a_spent_shadow_budget_stops_shadowing_and_nothing_else(shadowed: Shadowed) -> None:
    _budget(shadowed, 10**9, operation=ANY)  # the global budget: live calls have room
    _budget(shadowed, 1)  # the shadow budget: no room for any shadow call
    shadowed.candidate.release.set()

    outputs = [await shadowed.call(user=f"user-{i}") for i in range(3)]
    await shadowed.governed.gateway.drain_shadows()

    assert [o["category"] for _, o in outputs] == ["work"] * 3  # every user got the answer
    assert shadowed.candidate.requests == []  # nothing reached the candidate
    rows = shadowed.shadow_rows()
    assert sorted(r["live_request_id"] for r in rows) == sorted(rid for rid, _ in outputs)
    assert {(r["status"], r["shadow_cost_micro_usd"]) for r in rows} == {("refused", 0)}
    assert all(not r["shadow"] for r in shadowed.log_rows())  # no shadow call was logged as sent
    for rid, _ in outputs:
        kinds = [k for k, _ in shadowed.governed.entries(shadow_request_id(rid))]
        assert kinds == ["shadow.refused"]  # refused, counted, no intent: never queued or sent
    statuses = {s.budget.scope: s for s in budget_statuses(shadowed.governed.engine, shadowed.governed.clock.now())}
    live_cost = sum(r["cost_micro_usd"] for r in shadowed.log_rows())
    assert (statuses["global"].spent_micro_usd, statuses["global"].reserved_micro_usd) == (live_cost, 0)
    assert (statuses["shadow"].spent_micro_usd, statuses["shadow"].reserved_micro_usd) == (0, 0)
    report = shadowed.rollout.shadow(shadowed.rollout.list_rollouts()[0])
    assert report is not None and (report.calls, report.refused_budget) == (0, 3)


async def test_without_a_shadow_budget_every_shadow_call_is_refused(shadowed: Shadowed) -> None:
    await shadowed.call()
    await shadowed.governed.gateway.drain_shadows()
    assert [r["status"] for r in shadowed.shadow_rows()] == ["refused"]
    assert shadowed.candidate.requests == []


async def test_shadow_spend_is_charged_to_the_shadow_scope_only(shadowed: Shadowed) -> None:
    _budget(shadowed, 10**9, operation=ANY)
    _budget(shadowed, 10**9)
    shadowed.candidate.release.set()
    await shadowed.call()
    await shadowed.governed.gateway.drain_shadows()

    logged = shadowed.log_rows()
    live = sum(r["cost_micro_usd"] for r in logged if not r["shadow"])
    shadow = sum(r["cost_micro_usd"] for r in logged if r["shadow"])
    assert live > 0 and shadow > 0
    statuses = {s.budget.scope: s.spent_micro_usd for s in budget_statuses(shadowed.governed.engine,
                                                                             shadowed.governed.clock.now())}
    assert statuses == {"global": live, "shadow": shadow}
    [row] = shadowed.shadow_rows()
    assert (row["live_cost_micro_usd"], row["shadow_cost_micro_usd"]) == (live, shadow)


async def test_agreement_is_judged_against_the_live_answer(shadowed: Shadowed) -> None:
    _budget(shadowed, 10**9)
    shadowed.candidate.script = [ANSWER, {**ANSWER, "priority": "low"}, {**ANSWER, "reason": "other words"}]
    shadowed.candidate.release.set()
    for _ in range(3):
        await shadowed.call()
        await shadowed.governed.gateway.drain_shadows()  # one at a time: the script's order holds

    assert sorted(r["agreed"] for r in shadowed.shadow_rows()) == [False, True, True]
    report = shadowed.rollout.shadow(shadowed.rollout.list_rollouts()[0])
    assert report is not None
    j = report.to_json()
    assert (j["calls"], j["agreed"], j["agreement_pct"], j["errors"]) == (3, 2, 66.67, 0)
    assert j["cost_ratio"] is not None and 0 < j["cost_ratio"] < 1  # deepseek-chat is cheaper than opus


async def test_a_failed_shadow_call_is_recorded_as_a_disagreeing_error(shadowed: Shadowed) -> None:
    _budget(shadowed, 10**9)
    shadowed.candidate.script = [{"category": "not a category"}, {"category": "still not"}]
    shadowed.candidate.release.set()
    request_id, output = await shadowed.call()
    await shadowed.governed.gateway.drain_shadows()

    assert output["category"] == "work"
    [row] = shadowed.shadow_rows()
    assert (row["status"], row["agreed"]) == ("error", False) and row["shadow_cost_micro_usd"] > 0
    logged = {r["request_id"]: r for r in shadowed.log_rows()}
    assert (logged[request_id]["status"], logged[shadow_request_id(request_id)]["status"]) == ("ok", "error")


async def test_shutdown_cancels_a_shadow_call_that_does_not_finish(shadowed: Shadowed) -> None:
    _budget(shadowed, 10**9)
    await shadowed.call()
    await asyncio.wait_for(shadowed.candidate.sent.wait(), 30)

    await shadowed.governed.gateway.drain_shadows(timeout_s=0)

    assert shadowed.shadow_rows() == []  # cancelled in flight: its reservation expires like a crash's
    assert shadowed.governed.gateway._shadows == set()


async def test_calls_after_the_shadow_stage_are_not_shadowed(shadowed: Shadowed) -> None:
    _budget(shadowed, 10**9)
    r = shadowed.rollout.list_rollouts()[0]
    shadowed.rollout.advance(r.id, "alice")  # 5 %: users see the candidate, shadowing ends
    shadowed.candidate.release.set()
    for i in range(5):
        await shadowed.call(user=f"user-{i}")
    await shadowed.governed.gateway.drain_shadows()
    assert shadowed.shadow_rows() == []


async def test_a_degraded_live_call_is_not_shadowed(shadowed: Shadowed) -> None:
    _budget(shadowed, 10**9)
    shadowed.candidate.release.set()
    gateway = shadowed.governed.gateway
    served_id, _ = await shadowed.call()
    await gateway.drain_shadows()
    live = shadowed.governed.call(OP, CLASSIFY, user="bob")
    principal = gateway.authenticate(live)
    outcome = await gateway.govern(live)
    await gateway.drain_shadows()
    degraded = shadowed.governed.call(OP, CLASSIFY, user="carol")
    # the live answer came from a cheaper target of the chain (a ``cheaper`` budget degraded it)
    gateway.shadow(degraded, principal, gateway.authorize(principal, OP),
                   replace(outcome, request_id=degraded.request_id, degraded=True))
    await gateway.drain_shadows()
    assert sorted(r["live_request_id"] for r in shadowed.shadow_rows()) == sorted([served_id, live.request_id])
    report = shadowed.rollout.shadow(shadowed.rollout.list_rollouts()[0])
    assert report is not None and report.calls == 2


async def test_a_candidate_no_longer_configured_is_not_shadowed(shadowed: Shadowed) -> None:
    _budget(shadowed, 10**9)
    gateway = shadowed.governed.gateway
    gateway.variants = VariantBook({op: {"default": ops["default"]} for op, ops in gateway.variants.variants.items()})
    shadowed.candidate.release.set()
    await shadowed.call()
    await gateway.drain_shadows()
    assert shadowed.shadow_rows() == [] and shadowed.candidate.requests == []
