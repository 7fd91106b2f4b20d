"""The shadow stage of a variant rollout over a real SQLite database and ledger (issue 17, item 4):
the candidate serves nobody while a deterministic share of live calls is sampled for it; advancing
ends shadowing; the agreement rules per operation; the report of a rollout's shadow calls; shadow
rows never enter the canary's analysis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert

from opsgate.clock import ManualClock
from opsgate.config import Settings, VariantConfig
from opsgate.ledger.writer import Ledger
from opsgate.monitoring.health import compute_health
from opsgate.operations import prompt_catalogue
from opsgate.rollout.controller import Plan, Stage, State
from opsgate.rollout.errors import InvalidPlan
from opsgate.rollout.metrics import metrics_by_variant
from opsgate.rollout.models import shadow_calls
from opsgate.rollout.service import SHADOW_STAGE_S, RolloutService
from opsgate.rollout.shadow import agrees
from opsgate.rollout.toggles import ToggleSnapshot
from opsgate.rollout.variants import build_book
from opsgate.routing.policy import policies_for
from opsgate.store.db import make_engine, upgrade
from opsgate.store.models import ai_operation_log
from opsgate.web.queries import series

OP = "email-classify"
PLAN = Plan((Stage(5, 3600), Stage(100, 3600)), 3600)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'shadow.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def service(engine: Engine, tmp_path: Path) -> Iterator[RolloutService]:
    clock = ManualClock()
    ledger = Ledger(engine, clock)
    ledger.start()
    settings = Settings(config=tmp_path / "absent.toml",
                        variants={OP: {"cand": VariantConfig(chain=("gemini/gemini-3.8-flash",))}})
    book = build_book(settings, policies_for(settings), prompt_catalogue())
    svc = RolloutService(engine, ledger, clock, ToggleSnapshot(engine, clock, refresh_s=0), variants=book)
    svc.ensure_toggles([OP])
    yield svc
    ledger.close()


def test_the_shadow_stage_serves_nobody_and_samples_a_deterministic_share_of_calls(service: RolloutService) -> None:
    r = service.start_rollout([OP], PLAN, "alice", variant="cand", shadow_percent=10)
    assert r.state.plan.stages == (Stage(0, SHADOW_STAGE_S), *PLAN.stages)
    assert (r.shadow_percent, r.to_json()["percentage"], r.to_json()["shadow_percent"]) == (10, 0, 10)
    a = service.assignment(OP)
    assert (a.candidate, a.candidate_percentage, a.shadow_percentage) == ("cand", 0, 10)
    assert {a.serving(f"user-{i}") for i in range(2000)} == {"default"}
    snapshot = service.snapshot
    assert snapshot is not None
    assert snapshot.serving_variant(OP, "user-1") == "default"  # refreshes the snapshot
    sampled = [rid for i in range(4000) if snapshot.shadow_variant(OP, rid := f"req-{i}") == "cand"]
    assert 300 <= len(sampled) <= 500  # about 10 % of 4,000 calls
    assert all(snapshot.shadow_variant(OP, rid) == "cand" for rid in sampled)  # the same calls again
    report = service.shadow(r)
    assert report is not None and report.active and report.to_json() == {
        "percent": 10, "active": True, "calls": 0, "agreed": 0, "agreement_pct": None, "errors": 0,
        "refused_budget": 0, "live_cost_micro_usd": 0, "shadow_cost_micro_usd": 0, "cost_ratio": None}


def test_advancing_leaves_the_shadow_stage_and_ends_shadowing(service: RolloutService) -> None:
    r = service.start_rollout([OP], PLAN, "alice", variant="cand", shadow_percent=100)
    service.advance(r.id, "alice")
    a = service.assignment(OP)
    assert (a.candidate, a.candidate_percentage) == ("cand", 5)
    assert a.shadowed("req-1") is None
    report = service.shadow(service.get_rollout(r.id))
    assert report is not None and not report.active


def test_the_controller_holds_the_shadow_stage(service: RolloutService) -> None:
    r = service.start_rollout([OP], PLAN, "alice", variant="cand", shadow_percent=50)
    clock = service.clock
    assert isinstance(clock, ManualClock)
    clock.advance(SHADOW_STAGE_S + 1)
    decision = service.evaluate(r.id)
    assert decision is not None
    assert (decision.action.value, decision.after.state, decision.after.stage_index) == (
        "hold", State.AWAITING_PROMOTION, 0)
    assert service.assignment(OP).shadowed("req-x") in ("cand", None)
    assert service.assignment(OP).candidate_percentage == 0


@pytest.mark.parametrize(("variant", "percent", "message"), [
    (None, 10, "needs a variant rollout"),
    ("cand", 0, "1..100"),
    ("cand", 101, "1..100"),
])
def test_a_bad_shadow_request_is_refused_and_starts_nothing(
    service: RolloutService, variant: str | None, percent: int, message: str,
) -> None:
    with pytest.raises(InvalidPlan, match=message):
        service.start_rollout([OP], PLAN, "alice", variant=variant, shadow_percent=percent)
    assert service.list_rollouts() == []
    assert service.assignment(OP).candidate is None


def test_email_classify_agrees_on_category_and_priority() -> None:
    live = {"category": "work", "priority": "high", "reason": "a", "confidence": 0.9}
    assert agrees(OP, live, {**live, "reason": "other words", "confidence": 0.4})
    assert not agrees(OP, live, {**live, "priority": "low"})
    assert not agrees(OP, live, {**live, "category": "personal"})
    assert not agrees(OP, live, None)


def test_calendar_time_agrees_on_the_set_of_chosen_slots() -> None:
    a = {"start": "2026-12-07T09:00:00+00:00", "end": "2026-12-07T09:30:00+00:00", "reason": "x"}
    b = {"start": "2026-12-07T10:00:00+00:00", "end": "2026-12-07T10:30:00+00:00", "reason": "y"}
    live = {"recommended": [a, b], "summary": "s"}
    assert agrees("calendar-time", live, {"recommended": [{**b, "reason": "z"}, a], "summary": "t"})
    assert not agrees("calendar-time", live, {"recommended": [a], "summary": "s"})
    assert not agrees("calendar-time", live, None)


def test_other_operations_agree_when_the_shadow_answer_passed_the_schema() -> None:
    assert agrees("email-compose", {"body": "Hello"}, {"body": "Completely different"})
    assert not agrees("email-compose", {"body": "Hello"}, None)


def test_the_report_counts_agreement_failures_refusals_and_the_cost_ratio(service: RolloutService) -> None:
    r = service.start_rollout([OP], PLAN, "alice", variant="cand", shadow_percent=25)
    now = service.clock.now()
    rows = ([_shadow_row("ok", True, 1000, 600, now)] * 3 + [_shadow_row("ok", False, 1000, 700, now)]
            + [_shadow_row("error", False, 1000, 900, now)] + [_shadow_row("refused", False, 1000, 0, now)] * 2
            + [_shadow_row("ok", True, 1000, 5, now - timedelta(hours=1))]  # before the rollout
            + [{**_shadow_row("ok", True, 1000, 5, now), "variant": "other"}])
    with service.engine.begin() as conn:
        conn.execute(insert(shadow_calls), [{**row, "request_id": uuid.uuid4().hex} for row in rows])
    report = service.shadow(r)
    assert report is not None
    assert report.to_json() == {
        "percent": 25, "active": True, "calls": 5, "agreed": 3, "agreement_pct": 60.0, "errors": 1,
        "refused_budget": 2, "live_cost_micro_usd": 4000, "shadow_cost_micro_usd": 2500, "cost_ratio": 0.625}


def test_a_rollout_without_a_shadow_stage_reports_none(service: RolloutService) -> None:
    r = service.start_rollout([OP], PLAN, "alice", variant="cand")
    assert service.shadow(r) is None
    assert r.to_json()["shadow_percent"] is None


def test_shadow_rows_are_in_neither_cohort_of_the_canary_analysis(service: RolloutService) -> None:
    now = service.clock.now()
    rows = [{"request_id": uuid.uuid4().hex, "user_id": "u1", "operation": OP, "variant": variant,
             "shadow": shadow, "status": "ok", "attempts": 1, "latency_ms": 100.0, "cost_micro_usd": 10,
             "created_at": now} for variant, shadow in (("cand", True), ("cand", True), ("cand", False),
                                                         ("default", False), ("default", True))]
    with service.engine.begin() as conn:
        conn.execute(insert(ai_operation_log), rows)
    canary, control = metrics_by_variant(service.engine, OP, "cand", now - timedelta(seconds=1), now)
    assert (canary.requests, control.requests) == (1, 1)


def _shadow_row(status: str, agreed: bool, live: int, shadow: int, at: object) -> dict[str, object]:
    return {"live_request_id": uuid.uuid4().hex, "operation": OP, "variant": "cand", "status": status,
            "agreed": agreed, "live_cost_micro_usd": live, "shadow_cost_micro_usd": shadow, "created_at": at}


def test_shadow_rows_stay_out_of_the_users_health_numbers(service: RolloutService) -> None:
    now = service.clock.now()
    rows = [{"request_id": uuid.uuid4().hex, "user_id": "u1", "operation": OP, "variant": variant,
             "shadow": shadow, "status": status, "attempts": 1, "latency_ms": 100.0, "cost_micro_usd": 10,
             "created_at": now} for variant, shadow, status in (("default", False, "ok"), ("cand", True, "error"))]
    with service.engine.begin() as conn:
        conn.execute(insert(ai_operation_log), rows)
    health = compute_health(service.engine, now, 60, OP)
    assert (health.operationCount, health.errorRate) == (1, 0)
    traffic = series(service.engine, now, 60, 1, OP)["total"]
    assert (traffic["count"], traffic["errorRate"]) == (1, 0)
