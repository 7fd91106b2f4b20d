"""Variant rollouts in the service over a real SQLite database and ledger, on a manual clock:
stages move the candidate's share, the last promotion makes it live (ledgered with who started it),
a rollback sends everyone back, metrics compare the candidate with the live variant's calls."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, update
from tests.rollout.rollout_helpers import ledger_kinds

from opsgate.clock import ManualClock
from opsgate.config import Settings, VariantConfig
from opsgate.errors import NotFound
from opsgate.ledger.writer import Ledger
from opsgate.operations import prompt_catalogue
from opsgate.rollout.controller import Action, Plan, Stage, State
from opsgate.rollout.errors import InvalidPlan
from opsgate.rollout.metrics import metrics_by_variant, metrics_from_log
from opsgate.rollout.models import operation_variants
from opsgate.rollout.service import RolloutEvent, RolloutService, variant_group
from opsgate.rollout.toggles import ToggleSnapshot
from opsgate.rollout.variants import build_book
from opsgate.routing.policy import policies_for
from opsgate.store.db import make_engine, upgrade
from opsgate.store.models import ai_operation_log

OP = "email-classify"
PLAN = Plan((Stage(5, 3600), Stage(25, 3600), Stage(100, 3600)), 3600)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'variants.db'}"
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
    svc = RolloutService(engine, ledger, clock, ToggleSnapshot(engine, clock, refresh_s=5), variants=book)
    svc.ensure_toggles([OP])
    yield svc
    ledger.close()


def log_variant_calls(svc: RolloutService, variant: str, ok: int, failed: int, latency_ms: float = 300.0,
                      cost: int = 150, repaired: int = 0, code: str = "invalid_model_output",
                      degraded: bool = False) -> None:
    rows = [{"request_id": uuid.uuid4().hex, "user_id": f"u{i}", "operation": OP, "variant": variant,
             "repaired": i < repaired, "status": "ok" if i < ok else "error",
             "error_code": None if i < ok else code, "attempts": 1, "latency_ms": latency_ms,
             "input_tokens": 10, "output_tokens": 5, "cache_write_tokens": 0, "cache_read_tokens": 0,
             "reasoning_tokens": 0, "cost_micro_usd": cost, "created_at": svc.clock.now(),
             "degraded": degraded}
            for i in range(ok + failed)]
    with svc.engine.begin() as conn:
        conn.execute(insert(ai_operation_log), rows)


def test_stages_move_the_candidates_share_and_the_last_promotion_makes_it_live(service: RolloutService) -> None:
    clock = service.clock
    assert isinstance(clock, ManualClock)
    r = service.start_rollout([OP], PLAN, "alice", variant="cand")
    a = service.assignment(OP)
    assert (a.live, a.candidate, a.candidate_percentage, a.group_id) == ("default", "cand", 5, variant_group(OP, "cand"))
    assert service.get_toggle(OP).updated_by == "opsgate-seed"  # the toggle is left alone
    for percentage in (25, 100):
        clock.advance(3601)
        log_variant_calls(service, "cand", 200, 0)
        log_variant_calls(service, "default", 200, 0)
        assert service.evaluate(r.id) is not None
        assert service.assignment(OP).candidate_percentage == percentage
    clock.advance(3601)
    log_variant_calls(service, "cand", 200, 0)
    decision = service.evaluate(r.id)
    assert decision is not None and (decision.action, decision.after.state) == (Action.PROMOTE, State.OBSERVING)
    a = service.assignment(OP)
    assert (a.live, a.previous, a.candidate, a.candidate_percentage) == ("cand", "default", None, 0)
    assert service.snapshot is not None and service.snapshot.serving_variant(OP, "anyone") == "cand"
    promoted = [p for k, p in ledger_kinds(service.engine) if k == "variant.set"][-1]
    assert promoted["started_by"] == "alice" and promoted["actor"] == f"rollout:{r.id}"
    assert (promoted["before"]["live"], promoted["after"]["live"]) == ("default", "cand")

    rolled = service.rollback(r.id, "regret", "bob")  # a rollback after promotion restores the previous live
    assert rolled.action is Action.ROLLBACK
    a = service.assignment(OP)
    assert (a.live, a.previous, a.candidate) == ("default", None, None)
    assert service.get_toggle(OP).updated_by == "opsgate-seed"  # a variant rollback leaves the toggle alone


def test_an_automatic_rollback_clears_the_candidate_alerts_naming_the_variant(service: RolloutService) -> None:
    events: list[RolloutEvent] = []
    service.listeners.append(events.append)
    r = service.start_rollout([OP], PLAN, "alice", variant="cand")
    log_variant_calls(service, "cand", 180, 20)  # 10 % errors on the candidate
    log_variant_calls(service, "default", 400, 0)
    decision = service.evaluate(r.id)
    assert decision is not None and decision.action is Action.ROLLBACK
    assert decision.numbers["canary_requests"] == 200 and decision.numbers["control_requests"] == 400
    a = service.assignment(OP)
    assert (a.live, a.candidate, a.candidate_percentage) == ("default", None, 0)
    [event] = events
    assert (event.kind, event.severity, event.variant, event.operations) == ("rollout.rolled_back", "P2", "cand", (OP,))
    [banner] = service.banners()
    assert banner["operations"] == [OP] and banner["message"].startswith(f"{OP} is back on its previous version")


def test_a_half_done_stage_change_is_completed_from_the_rollout_row(service: RolloutService) -> None:
    r = service.start_rollout([OP], PLAN, "alice", variant="cand")
    with service.engine.begin() as conn:  # the stage's assignment write lost
        conn.execute(update(operation_variants).where(operation_variants.c.operation == OP)
                     .values(candidate=None, candidate_percentage=0))
    service.evaluate(r.id)  # converges first: the rollout row says stage 1 at 5 %
    a = service.assignment(OP)
    assert (a.candidate, a.candidate_percentage) == ("cand", 5)


@pytest.mark.parametrize("name", ["", "  "])
def test_an_empty_variant_name_starts_nothing(service: RolloutService, name: str) -> None:
    with pytest.raises(InvalidPlan, match="name the variant to roll out"):
        service.start_rollout([OP], PLAN, "alice", variant=name)
    assert (service.list_rollouts(), service.assignment(OP).candidate) == ([], None)


def test_an_unknown_operation_is_named_with_the_known_ones(service: RolloutService) -> None:
    with pytest.raises(NotFound) as caught:
        service.start_rollout(["email-reply"], PLAN, "alice")
    assert caught.value.detail == "unknown operation (known: email-classify)"  # the seeded toggles
    assert service.list_rollouts() == []


def test_metrics_by_variant_split_one_operations_calls(service: RolloutService) -> None:
    since = service.clock.now()
    log_variant_calls(service, "cand", 99, 1, latency_ms=900.0, repaired=8, code="content_filtered")
    log_variant_calls(service, "default", 50, 0, latency_ms=100.0, repaired=1)
    canary, control = metrics_by_variant(service.engine, OP, "cand", since, since + timedelta(seconds=1))
    assert (canary.requests, canary.errors, canary.p99_latency_ms, canary.repaired, canary.refused) == (
        100, 1, 900.0, 8, 1)
    assert (control.requests, control.errors, control.p99_latency_ms, control.repaired, control.refused) == (
        50, 0, 100.0, 1, 0)


def test_degraded_calls_are_in_neither_variant_cohort_but_count_for_the_toggle(service: RolloutService) -> None:
    since = service.clock.now()
    until = since + timedelta(seconds=1)
    log_variant_calls(service, "cand", 10, 0, latency_ms=200.0, cost=100)
    log_variant_calls(service, "default", 10, 0, latency_ms=300.0, cost=900)
    before = metrics_by_variant(service.engine, OP, "cand", since, until)
    # a cheaper budget sent these past the chain's first target: cheap, slow and failing
    log_variant_calls(service, "cand", 1, 2, latency_ms=9_000.0, cost=1, degraded=True)
    log_variant_calls(service, "default", 1, 2, latency_ms=9_000.0, cost=1, degraded=True)
    canary, control = metrics_by_variant(service.engine, OP, "cand", since, until)
    assert (canary, control) == before
    assert (canary.requests, canary.errors, canary.p99_latency_ms, canary.cost_per_request_micro_usd) == (
        10, 0, 200.0, 100)
    assert (control.requests, control.errors, control.p99_latency_ms, control.cost_per_request_micro_usd) == (
        10, 0, 300.0, 900)
    toggle_canary, _ = metrics_from_log(service.engine, [OP], since, until)  # the operation served them
    assert (toggle_canary.requests, toggle_canary.errors, toggle_canary.p99_latency_ms) == (26, 4, 9_000.0)


def test_a_candidate_costing_3x_the_live_variant_is_rolled_back_on_its_metrics(service: RolloutService) -> None:
    r = service.start_rollout([OP], PLAN, "alice", variant="cand")
    log_variant_calls(service, "cand", 200, 0, cost=450)
    log_variant_calls(service, "default", 400, 0, cost=150)
    decision = service.evaluate(r.id)
    assert decision is not None and decision.action is Action.ROLLBACK
    assert decision.reason == "canary cost per call 450 micro-USD above 1.5x control's 150"
    assert (decision.numbers["canary_cost_per_request_micro_usd"],
            decision.numbers["control_cost_per_request_micro_usd"]) == (450, 150)
    assert service.assignment(OP).candidate is None
