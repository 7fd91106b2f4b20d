"""The three scenarios end as specified, through the real HTTP API, pipeline, controller and
alerting, on a compressed 12-hour plan with 1,000 users; the same seed gives the same report."""

from __future__ import annotations

import asyncio
from functools import cache
from typing import Any

from opsgate.monitoring.criteria import rehearsal_rows
from opsgate.rehearsal.driver import RehearsalConfig, rehearse


@cache
def run(scenario: str, seed: int = 0) -> dict[str, Any]:
    return asyncio.run(rehearse(RehearsalConfig(hours=12, users=1000, scenario=scenario, seed=seed)))


def actions(report: dict[str, Any]) -> list[tuple[str, int]]:
    return [(d["action"], d["percentage"]) for d in report["rehearsal"]["timeline"]]


def test_healthy_promotes_to_100_percent() -> None:
    report = run("healthy")
    r = report["rehearsal"]
    assert actions(report) == [("promote", 25), ("promote", 100), ("promote", 100)]
    assert r["rollout"]["state"] == "observing" and r["rollout"]["percentage"] == 100
    assert r["operation_log"]["errors"] == 0
    assert r["operation_log"]["by_provider"] == {"anthropic": r["operation_log"]["requests"]}
    assert r["alerts"]["rollout_events"] == [] and r["alerts"]["delivered"] == {}
    assert r["calls"]["problem_codes"].keys() == {"operation_disabled"}
    rows = rehearsal_rows(report, "this rehearsal")
    assert [r.criterion for r in rows] == [
        "Error Rate", "P99 Latency", "Average Latency", "Availability", "Cost Accuracy",
        "Security Issues", "Hash Chain Integrity",
    ]
    assert all(r.status == "pass" for r in rows), rows


def test_bad_release_rolls_back_automatically_at_25_percent() -> None:
    report = run("bad-release")
    r = report["rehearsal"]
    assert actions(report) == [("promote", 25), ("rollback", 0), ("verified", 0)]
    rollback = r["timeline"][1]
    assert rollback["stage_index"] == 1 and rollback["reason"] == "canary error rate above 1 %"
    assert rollback["numbers"]["canary_error_ppm"] > 10_000 and rollback["numbers"]["canary_requests"] >= 100
    assert r["rollout"]["state"] == "rolled_back"
    assert r["operation_log"]["error_codes"] == {"provider_rejected": r["operation_log"]["errors"]}
    assert [e["kind"] for e in r["alerts"]["rollout_events"]] == ["rollout.rolled_back"]
    assert r["alerts"]["delivered"] == {"discord": 1, "pagerduty": 1, "sms": 1}
    assert r["alerts"]["incidents"] == ["P2 Rollout 1: rollout.rolled_back"]
    assert r["criteria"]["scenario_checks"]["passed"] == 5
    assert r["criteria"]["hash_chain_integrity"]["ok"] is True


def test_provider_outage_falls_back_without_rollback() -> None:
    report = run("provider-outage")
    r = report["rehearsal"]
    assert actions(report) == [("promote", 25), ("promote", 100), ("promote", 100)]
    assert [f["faults"] for f in r["faults"]] == ["outage:anthropic", "none"]
    start, end = r["faults"][0]["hours"], r["faults"][1]["hours"]
    assert 40 / 60 <= end - start < 40 / 60 + 0.1
    assert r["operation_log"]["errors"] == 0
    assert r["operation_log"]["by_provider"]["deepseek"] > 0
    assert r["alerts"]["rollout_events"] == []
    assert r["criteria"]["scenario_checks"]["passed"] == 5


def test_same_seed_same_report_other_seed_other_users() -> None:
    first = run("provider-outage")
    again = asyncio.run(rehearse(RehearsalConfig(hours=12, users=1000, scenario="provider-outage", seed=0)))
    assert again["rehearsal"] == first["rehearsal"]
    assert again["measured"]["wall_clock_s"] > 0
    other = run("healthy", seed=1)
    assert other["rehearsal"]["calls"] != run("healthy")["rehearsal"]["calls"]
