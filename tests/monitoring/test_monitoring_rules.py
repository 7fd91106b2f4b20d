"""Each rule fires above its threshold, not at it, and not below the minimum sample; the seed's
severity table."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine, insert

from opsgate.clock import ManualClock
from opsgate.metering.models import cost_reconciliations
from opsgate.monitoring.health import LEDGER_VERIFY, compute_health
from opsgate.monitoring.hooks import record_signal
from opsgate.monitoring.rules import (
    SEVERITY_TABLE,
    RuleConfig,
    Severity,
    classify_error_rate,
    evaluate,
)
from opsgate.store.models import ai_operation_log

CLOCK = ManualClock()


def log_calls(engine: Engine, op: str, n: int, errors: int = 0, latency: float = 100.0,
              slow: int = 0, slow_ms: float = 6000.0) -> None:
    now = CLOCK.now()
    rows = [{"request_id": f"{op}-{i}-{n}-{errors}", "user_id": "u", "operation": op, "provider": "anthropic",
             "model": "m", "status": "error" if i < errors else "ok", "attempts": 1,
             "latency_ms": slow_ms if i >= n - slow else latency, "provider_latency_ms": 50.0,
             "cost_micro_usd": 10, "created_at": now - timedelta(seconds=60)} for i in range(n)]
    with engine.begin() as conn:
        conn.execute(insert(ai_operation_log), rows)


def findings(engine: Engine, rule: str) -> dict[str, tuple[bool | None, Severity | None]]:
    with engine.connect() as conn:
        found = evaluate(conn, CLOCK.now(), RuleConfig(), set())
    return {f.labels.get("operation") or f.labels.get("provider") or "-": (f.firing, f.severity)
            for f in found if f.rule == rule}


@pytest.mark.parametrize(("errors", "expected"), [
    (1, (False, None)),            # exactly 1 %: not above the threshold
    (2, (True, Severity.P2)),      # 2 %
    (5, (True, Severity.P2)),      # exactly 5 %: still P2
    (6, (True, Severity.P1)),      # 6 %
])
def test_monitoring_error_rate_thresholds(db, errors, expected) -> None:
    _, engine = db
    log_calls(engine, "email-compose", 100, errors)
    assert findings(engine, "error_rate") == {"email-compose": expected}


def test_monitoring_error_rate_needs_the_minimum_sample(db) -> None:
    _, engine = db
    log_calls(engine, "email-compose", 19, errors=19)
    assert findings(engine, "error_rate") == {"email-compose": (None, None)}
    log_calls(engine, "email-compose", 1, errors=1)
    assert findings(engine, "error_rate") == {"email-compose": (True, Severity.P1)}


def test_monitoring_p99_latency_threshold(db) -> None:
    _, engine = db
    log_calls(engine, "task-breakdown", 100, slow=100, slow_ms=5000.0)
    assert findings(engine, "p99_latency") == {"task-breakdown": (False, None)}
    log_calls(engine, "calendar-prep", 100, slow=2, slow_ms=5001.0)  # the 99th of 100 is slow
    assert findings(engine, "p99_latency")["calendar-prep"] == (True, Severity.P2)
    log_calls(engine, "email-respond", 100, slow=1, slow_ms=9000.0)  # only the 100th: p99 is fine
    assert findings(engine, "p99_latency")["email-respond"] == (False, None)


@pytest.mark.parametrize(("difference", "firing"), [(10_000, False), (10_001, True)])
def test_monitoring_cost_discrepancy_threshold(db, difference, firing) -> None:
    _, engine = db
    with engine.begin() as conn:
        conn.execute(insert(cost_reconciliations).values(
            run_id="r1", provider="deepseek", invoice_name="inv.csv", day=CLOCK.now().date(), model="deepseek-chat",
            tracked_micro_usd=1_000_000 - difference, invoiced_micro_usd=1_000_000,
            difference_micro_usd=difference, accuracy_pct="99.00", created_at=CLOCK.now()))
    assert findings(engine, "cost_discrepancy") == {"deepseek": (firing, Severity.P2 if firing else None)}
    assert compute_health(engine, CLOCK.now(), 3600).costAccuracy == 99.0  # 2 decimals, half up


def test_monitoring_ledger_failure_is_p1_and_immediate(db) -> None:
    _, engine = db
    record_signal(engine, CLOCK, LEDGER_VERIFY, "ledger", ok=False, detail="hash_mismatch at seq 3")
    with engine.connect() as conn:
        [f] = [f for f in evaluate(conn, CLOCK.now(), RuleConfig(), set()) if f.rule == "ledger_integrity"]
    assert (f.firing, f.severity, f.immediate) == (True, Severity.P1, True)
    assert compute_health(engine, CLOCK.now(), 3600).hashChainIntegrity is False


def test_monitoring_severity_table_matches_the_seed() -> None:
    assert classify_error_rate(Decimal("0.5")) is Severity.P3
    assert classify_error_rate(Decimal(1)) is Severity.P3
    assert classify_error_rate(Decimal("1.01")) is Severity.P2
    assert classify_error_rate(Decimal(5)) is Severity.P2
    assert classify_error_rate(Decimal("5.01")) is Severity.P1
    assert SEVERITY_TABLE["cost_discrepancy"] is Severity.P1
    assert SEVERITY_TABLE["security_breach"] is Severity.P1
    assert SEVERITY_TABLE["provider_failure"] is Severity.P2
    assert SEVERITY_TABLE["latency_over_5s"] is Severity.P2
    assert SEVERITY_TABLE["minor_feature_broken"] is Severity.P3


def test_monitoring_health_metrics_exact_percentiles(db) -> None:
    _, engine = db
    log_calls(engine, "email-classify", 100, errors=3, slow=5, slow_ms=2000.0)
    health = compute_health(engine, CLOCK.now(), 3600, "email-classify")
    body = health.model_dump()
    assert list(body) == ["operationCount", "errorRate", "averageLatency", "p95Latency", "p99Latency",
                          "costAccuracy", "budgetEnforcement", "providerAvailability",
                          "hashChainIntegrity", "lastCheckTime"]
    assert (health.operationCount, health.errorRate) == (100, 3.0)
    assert (health.p95Latency, health.p99Latency, health.averageLatency) == (100.0, 2000.0, 195.0)
    assert body["providerAvailability"] == {"anthropic": {"available": True, "errorRate": 3.0, "latency": 50.0}}
    assert compute_health(engine, CLOCK.now(), 3600, "other").operationCount == 0
