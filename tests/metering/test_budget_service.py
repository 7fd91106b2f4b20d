"""MeteringService: worst case, fail-closed enforcement and the enforcement-failure events; the
budgets admin API over real HTTP."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from tests.budgets import ledgered_budget
from tests.gateways import gateway_settings, running_gateway

from opsgate.clock import ManualClock
from opsgate.errors import OpsgateError
from opsgate.ledger.writer import Ledger
from opsgate.metering.cost import worst_case_micro_usd
from opsgate.metering.enforcement import EnforcementFailure, EnforcementHooks
from opsgate.metering.errors import BudgetUnavailable, PriceTableError
from opsgate.metering.models import ANY
from opsgate.metering.prices import PriceTable
from opsgate.metering.ratelimit import RateLimiter, RateLimits
from opsgate.metering.attempts import ESTIMATED, REPORTED, billing
from opsgate.metering.service import MeteringService, require_prices
from opsgate.metering.worstcase import (
    PROMPT_OVERHEAD_TOKENS,
    attempt_worst_case_micro_usd,
    prompt_token_bound,
)
from opsgate.numbers import DECIMAL_RULE
from opsgate.providers.base import CompletionRequest
from opsgate.security.auth import TokenService
from opsgate.security.users import add_user
from opsgate.store.db import make_engine, upgrade

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
REQUEST = CompletionRequest(system="Classify.", user="héllo 世界", max_tokens=100,
                            json_schema={"type": "object"})


def test_prompt_bound_counts_utf8_bytes_schema_and_overhead() -> None:
    schema = len(b'{\n  "type": "object"\n}')
    assert prompt_token_bound(REQUEST) == 9 + len("héllo 世界".encode()) + schema + PROMPT_OVERHEAD_TOKENS


def test_an_attempts_worst_case_is_its_prompt_bound_and_max_tokens_at_its_models_price() -> None:
    prices = PriceTable.load()
    prompt = prompt_token_bound(REQUEST)
    for model in ("gemini-2.0-flash", "claude-opus-4-5", "deepseek-chat"):
        expected = worst_case_micro_usd(prompt, 100, prices.price_for(model), cache_writes=False)
        assert attempt_worst_case_micro_usd(REQUEST, model, prices) == expected
    assert attempt_worst_case_micro_usd(REQUEST, "claude-opus-4-5", prices) > \
        attempt_worst_case_micro_usd(REQUEST, "deepseek-chat", prices)


def test_every_routed_model_needs_a_price() -> None:
    with pytest.raises(PriceTableError, match="gpt-9"):
        require_prices(PriceTable.load(), ["claude-opus-4-5", "gpt-9"])


def test_usage_is_unknown_after_a_timeout_or_an_unreadable_200_but_not_after_a_429() -> None:
    def how(kind: str, status: int | None, *, sent: bool = True, reported: bool = False) -> str | None:
        return billing(sent=sent, outcome_kind=kind, http_status=status, reported=reported)

    assert how("timeout", None) == ESTIMATED and how("rate_limited", 429) is None
    assert how("malformed_response", 200) == ESTIMATED and how("connection_failed", 200) == ESTIMATED
    assert how("content_filtered", 200, reported=True) == REPORTED and how("ok", 200, reported=True) == REPORTED
    assert how("overloaded", 529) is None and how("connection_failed", None) is None
    assert how("circuit_open", None, sent=False) is None


def _service(engine, clock, events: list[EnforcementFailure]) -> MeteringService:  # type: ignore[no-untyped-def]
    hooks = EnforcementHooks()
    hooks.subscribe(events.append)
    hooks.subscribe(lambda e: 1 / 0)  # a broken subscriber never breaks enforcement
    limiter = RateLimiter(RateLimits())
    return MeteringService(engine, clock, PriceTable.load(), limiter, hooks, reservation_ttl_s=60)


async def test_a_failing_store_refuses_the_call_and_publishes_an_event(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    upgrade(url)
    engine, clock, events = make_engine(url), ManualClock(NOW), []
    ledgered_budget(engine, clock, user_id=ANY, operation=ANY, period="day", limit_micro_usd=10**9)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE budget_reservations"))
    service = _service(engine, clock, events)
    ledger = Ledger(engine, clock)
    ledger.start()
    reserve = service.reserve_in("r1", "alice", "email-classify", REQUEST, "claude-opus-4-5")
    with pytest.raises(BudgetUnavailable) as info:
        await ledger.append("intent", {"request_id": "r1"}, work=reserve)
    ledger.close()
    assert isinstance(info.value, OpsgateError) and info.value.status == 503
    assert ledger.entries == 0  # a refused reservation leaves no intent
    assert [(e.reason, e.operation, e.request_id) for e in events] == [
        ("enforcement_error", "email-classify", "r1")]


async def test_an_overspend_publishes_an_event(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    upgrade(url)
    engine, clock, events = make_engine(url), ManualClock(NOW), []
    service = _service(engine, clock, events)
    worst = attempt_worst_case_micro_usd(REQUEST, "claude-opus-4-5", service.prices)
    ledgered_budget(engine, clock, user_id="alice", operation=ANY, period="month", limit_micro_usd=worst)
    ledger = Ledger(engine, clock)
    ledger.start()
    reserve = service.reserve_in("r1", "alice", "email-classify", REQUEST, "claude-opus-4-5")
    reservation = (await ledger.append("intent", {"request_id": "r1"}, work=reserve)).work_result
    settle = service.settle_in(reservation, worst + 1, unknown_usage=False)
    settlement = (await ledger.append("result", {"request_id": "r1"}, work=settle)).work_result
    ledger.close()
    await service.settled(reservation, settlement)
    assert [(e.reason, e.operation) for e in events] == [("overspend", "email-classify")]
    assert "user:alice" in events[0].detail


def test_admin_api_sets_and_lists_budgets(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path)
    tokens = TokenService(settings, ManualClock(datetime.now(UTC)))
    admin = {"Authorization": f"Bearer {tokens.issue('root', 'admin')}"}
    user = {"Authorization": f"Bearer {tokens.issue('alice', 'user')}"}
    with running_gateway(settings) as gateway:
        add_user(gateway.runtime.engine, gateway.runtime.clock, "root", "admin")  # its admin token needs the row
        client = gateway.client
        put = client.put("/v1/admin/budgets", headers=admin,
                         json={"user_id": "alice", "period": "day", "limit_usd": "0.010"})
        assert put.status_code == 200, put.text
        assert (put.json()["scope"], put.json()["limit_micro_usd"]) == ("user:alice", 10_000)
        assert put.json()["on_exhausted"] == "refuse"
        cheaper = client.put("/v1/admin/budgets", headers=admin, json={
            "user_id": "alice", "period": "day", "limit_usd": "0.020", "on_exhausted": "cheaper"})
        assert cheaper.status_code == 200 and cheaper.json()["on_exhausted"] == "cheaper"
        kept = client.put("/v1/admin/budgets", headers=admin,
                          json={"user_id": "alice", "period": "day", "limit_usd": "0.010"})
        assert kept.json()["on_exhausted"] == "cheaper"  # unchanged when not given
        listed = client.get("/v1/admin/budgets", headers=admin).json()["budgets"]
        assert [(b["scope"], b["spent_micro_usd"], b["reserved_micro_usd"], b["left_micro_usd"],
                 b["refused_today"], b["degraded_today"]) for b in listed] == [("user:alice", 0, 0, 10_000, 0, 0)]
        unknown = client.put("/v1/admin/budgets", headers=admin, json={
            "user_id": "alice", "period": "day", "limit_usd": "0.010", "on_exhausted": "cheapest"})
        assert unknown.status_code == 422 and unknown.json()["code"] == "invalid_input"
        denied = client.get("/v1/admin/budgets", headers=user)
        assert denied.status_code == 403 and denied.json()["code"] == "forbidden"
        bad = client.put("/v1/admin/budgets", headers=admin,
                         json={"period": "day", "limit_usd": "0.0000001"})
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_input"


NOT_DECIMAL = f"limit_usd must be {DECIMAL_RULE}"


def test_admin_api_refuses_bad_budgets_with_the_clis_messages(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path)
    tokens = TokenService(settings, ManualClock(datetime.now(UTC)))
    admin = {"Authorization": f"Bearer {tokens.issue('root', 'admin')}"}
    day = {"period": "day", "limit_usd": "1"}
    refused = [
        ({**day, "limit_usd": "99999999999999"}, "limit_usd must be at most 1,000,000,000 USD"),
        ({**day, "limit_usd": "1e400"}, NOT_DECIMAL),
        ({**day, "limit_usd": "1_000"}, NOT_DECIMAL),
        ({**day, "limit_usd": "\uff11\uff10"}, NOT_DECIMAL),
        ({**day, "limit_usd": "\u0661\u0660"}, NOT_DECIMAL),
        ({**day, "limit_usd": " 10"}, NOT_DECIMAL),
        ({**day, "limit_usd": "NaN"}, NOT_DECIMAL),
        ({**day, "user_id": "alice", "operation": "@shadow"}, "a shadow budget is global only: user_id must be '*'"),
        ({**day, "operation": "@shadow", "on_exhausted": "cheaper"},
         "a shadow budget cannot be cheaper: shadow calls are never degraded"),
        ({**day, "operation": "nope"}, "unknown operation; known: analytics-anomaly, analytics-summary, "
                                       "calendar-prep, calendar-time, email-classify, email-compose, "
                                       "email-respond, task-breakdown, task-prioritize"),
        ({**day, "on_exhausted": "cheap"}, "on_exhausted must be one of refuse, cheaper"),
        ({**day, "period": "mon"}, "period must be one of day, month"),
    ]
    with running_gateway(settings) as gateway:
        add_user(gateway.runtime.engine, gateway.runtime.clock, "root", "admin")  # its admin token needs the row
        for body, message in refused:
            answer = gateway.client.put("/v1/admin/budgets", headers=admin, json=body)
            assert (answer.status_code, answer.json()["code"], answer.json()["detail"]) == (
                422, "invalid_input", message), body
        assert gateway.client.get("/v1/admin/budgets", headers=admin).json() == {"budgets": []}
        largest = gateway.client.put("/v1/admin/budgets", headers=admin,
                                     json={**day, "user_id": "not-yet-a-user", "limit_usd": "1000000000"})
        assert (largest.status_code, largest.json()["limit_micro_usd"]) == (200, 10**15)
        shadow = gateway.client.put("/v1/admin/budgets", headers=admin,
                                    json={**day, "operation": "@shadow", "on_exhausted": "refuse"})
        assert (shadow.status_code, shadow.json()["scope"]) == (200, "shadow")
