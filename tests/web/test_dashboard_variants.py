"""The Rollouts page's variant view (issue 17, item 6): for a variant rollout, canary against control
per metric with its threshold and verdict, and the shadow calls' agreement, cost ratio and counts.

One gateway (sandboxes, a :class:`ManualClock` with the sandboxes' seeded latency, so p99 values are
exact) runs a variant rollout of email-classify whose candidate answers from Gemini and misses its
schema on 20 % of requests: a shadow stage with 5 real calls, then a 50 % stage with 100 calls from
100 users, then the controller's evaluation. The API document, the dashboard's data document and
the cells Chromium shows are compared with each other and with ``ai_operation_log``."""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser
from sqlalchemy import select
from tests.gateways import Gateway, gateway_settings, running_gateway
from tests.paths import EXAMPLES
from tests.web.browsing import Console, Dashboard, screenshot, sign_in, wait_live

from opsgate.clock import ManualClock
from opsgate.config import VariantConfig
from opsgate.security.users import add_user, set_password
from opsgate.store.models import ai_operation_log
from opsgate.web import data
from opsgate.web.format import show

OP = "email-classify"
CANDIDATE = "flash-v2"
BODY = {"raw": (EXAMPLES / "email-classify.eml").read_text()}
MIN_REQUESTS = 20


def _admin(gateway: Gateway) -> dict[str, str]:
    add_user(gateway.runtime.engine, gateway.runtime.clock, "root", "admin")  # a local admin token needs its row
    return {"Authorization": f"Bearer {gateway.runtime.tokens.issue('root', 'admin')}"}


def _call(gateway: Gateway, user: str) -> None:
    answer = gateway.post(OP, BODY, token=gateway.runtime.tokens.issue(user, "user"))
    assert answer.status_code == 200, answer.text


def _wait_for_shadow_calls(gateway: Gateway, count: int) -> None:
    """Shadow calls run after the user's answer: wait until ``count`` are recorded (at most 30 s)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        [rollout] = gateway.client.get("/v1/admin/rollouts", headers=_admin(gateway)).json()["rollouts"]
        if rollout["shadow"]["calls"] >= count:
            return
        time.sleep(0.05)


@pytest.fixture(scope="module")
def variant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, Any], str]]:
    """The gateway after the evaluation, the rollout as ``GET /v1/admin/rollouts`` lists it, and
    the operator's password."""
    tmp: Path = tmp_path_factory.mktemp("variant-dashboard")
    settings = gateway_settings(tmp, variants={OP: {CANDIDATE: VariantConfig(chain=("gemini/gemini-3.8-flash",))}},
                                sandbox_faults="schema:gemini:20", sandbox_latency_seed=5,
                                canary_min_requests=MIN_REQUESTS, session_cookie_secure=False)
    clock = ManualClock(datetime.now(UTC))
    with running_gateway(settings, clock) as gateway:
        admin = _admin(gateway)
        started = gateway.client.post("/v1/admin/rollouts", headers=admin, json={
            "operations": [OP], "variant": CANDIDATE, "shadow_percent": 100,
            "plan": {"stages": [{"percentage": 50, "seconds": 3600}], "observation_s": 3600}})
        assert started.status_code == 201, started.text
        budget = gateway.client.put("/v1/admin/budgets", headers=admin,
                                    json={"user_id": "*", "operation": "@shadow", "period": "day", "limit_usd": "1"})
        assert budget.status_code == 200, budget.text
        for i in range(5):
            _call(gateway, f"shadowed-{i}")
        _wait_for_shadow_calls(gateway, 5)
        clock.advance(60)
        assert gateway.client.post(f"/v1/admin/rollouts/{started.json()['id']}/advance", headers=admin).status_code == 200
        clock.advance(60)
        for i in range(100):
            _call(gateway, f"user-{i}")
        clock.advance(600)
        gateway.runtime.rollout.evaluate_all()
        [rollout] = gateway.client.get("/v1/admin/rollouts", headers=admin).json()["rollouts"]
        add_user(gateway.runtime.engine, clock, "oscar", "operator")
        password = secrets.token_urlsafe(18)
        set_password(gateway.runtime.engine, "oscar", password)
        yield gateway, rollout, password


def _stage_rows(gateway: Gateway, since: str) -> list[Any]:
    log = ai_operation_log.c
    query = select(log.variant, log.latency_ms, log.repaired, log.cost_micro_usd, log.status).where(
        log.operation == OP, log.shadow.is_(False), log.created_at >= datetime.fromisoformat(since))
    with gateway.runtime.engine.connect() as conn:
        return list(conn.execute(query))


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


def test_the_api_and_the_dashboard_data_compare_canary_with_control_per_metric(
        variant: tuple[Gateway, dict[str, Any], str]) -> None:
    gateway, rollout, _ = variant
    assert data.rollouts(gateway.runtime)["rollouts"] == [rollout]  # the page's document is the API's
    c = rollout["comparison"]
    rows = _stage_rows(gateway, rollout["stage_started_at"])
    canary = [r for r in rows if r.variant == CANDIDATE]
    control = [r for r in rows if r.variant != CANDIDATE]
    assert c["samples"] == {"canary": len(canary), "control": len(control), "minimum": MIN_REQUESTS}
    assert len(canary) + len(control) == 100 and min(len(canary), len(control)) >= MIN_REQUESTS
    metrics = {m["metric"]: m for m in c["metrics"]}
    assert list(metrics) == ["error_rate", "repair_rate", "refusal_rate", "p99_latency", "cost_per_call"]

    assert (metrics["error_rate"]["canary"], metrics["error_rate"]["control"]) == (0, 0)
    assert metrics["error_rate"]["rule"] == "> 1 % → rollback" and metrics["error_rate"]["verdict"] == "pass"
    repaired = sum(r.repaired for r in canary)
    assert repaired > 0 and sum(r.repaired for r in control) == 0
    assert metrics["repair_rate"]["canary"] == repaired * 1_000_000 // len(canary)
    assert (metrics["repair_rate"]["control"], metrics["repair_rate"]["rule"], metrics["repair_rate"]["verdict"]) == (
        0, "> control + 5 points → hold", "fail")  # about 20 % of the candidate's answers needed the repair
    assert (metrics["refusal_rate"]["canary"], metrics["refusal_rate"]["verdict"]) == (0, "pass")
    p99 = metrics["p99_latency"]
    assert p99["canary"] == pytest.approx(_p99([r.latency_ms for r in canary]), abs=0.001)
    assert p99["control"] == pytest.approx(_p99([r.latency_ms for r in control]), abs=0.001)
    assert p99["rule"] == "> 2× control → rollback"
    assert p99["verdict"] == ("fail" if p99["canary"] > 2 * p99["control"] else "pass")
    cost = metrics["cost_per_call"]
    assert (cost["canary"], cost["control"]) == (sum(r.cost_micro_usd for r in canary) // len(canary),
                                                 sum(r.cost_micro_usd for r in control) // len(control))
    assert cost["rule"] == "> 1.5× control → rollback"
    assert cost["verdict"] == ("fail" if cost["canary"] > 1.5 * cost["control"] else "pass")
    decision = rollout["history"][-1]
    assert (decision["action"], c["at"]) == ("hold", decision["at"])
    assert "schema-repair rate more than 5 points above control's" in decision["reason"]

    shadow = rollout["shadow"]
    assert (shadow["percent"], shadow["active"], shadow["calls"], shadow["errors"], shadow["refused_budget"]) == (
        100, False, 5, 0, 0)
    assert shadow["agreement_pct"] == round(100 * shadow["agreed"] / 5, 2)
    assert shadow["cost_ratio"] == round(shadow["shadow_cost_micro_usd"] / shadow["live_cost_micro_usd"], 3)


def test_the_rollouts_page_shows_each_metric_with_its_threshold_and_the_shadow_agreement(
        browser: Browser, variant: tuple[Gateway, dict[str, Any], str]) -> None:
    gateway, rollout, password = variant
    dashboard = Dashboard(gateway.base_url, gateway.runtime, {"oscar": password}, None,  # type: ignore[arg-type]
                          gateway.client, Path(), {})  # sign_in reads the base URL and the password only
    console = Console()
    page = sign_in(browser, dashboard, "oscar", console)
    page.goto("/dashboard/rollouts")
    wait_live(page)
    screenshot(page, "rollouts-variant")
    card = page.locator(f"#rollout-{rollout['id']}")
    assert card.locator(".candidate").inner_text() == CANDIDATE
    samples = rollout["comparison"]["samples"]
    assert card.locator(".samples-canary").inner_text() == str(samples["canary"])
    assert card.locator(".samples-control").inner_text() == str(samples["control"])
    assert card.locator(".samples-minimum").inner_text() == str(MIN_REQUESTS)
    shown = {}
    for m in rollout["comparison"]["metrics"]:
        row = card.locator(f"table.comparison tr[data-metric={m['metric']}]")
        shown[m["metric"]] = [row.locator(f"td.{cell}").inner_text().strip()
                              for cell in ("canary", "control", "rule", "verdict")]
        assert shown[m["metric"]] == [show(m["canary"], m["format"]), show(m["control"], m["format"]),
                                      m["rule"], m["verdict"]]
    assert shown["repair_rate"][2:] == ["> control + 5 points → hold", "fail"]
    assert shown["error_rate"] == ["0.00 %", "0.00 %", "> 1 % → rollback", "pass"]
    shadow = rollout["shadow"]
    assert card.locator("table.shadow td.agreement").inner_text() == f"{shadow['agreement_pct']:.2f} %"
    assert card.locator("table.shadow td.calls").inner_text() == f"{shadow['calls']} / {shadow['agreed']} / 0"
    assert card.locator("table.shadow td.cost-ratio").inner_text() == str(shadow["cost_ratio"])
    assert card.locator("table.shadow td.refused").inner_text() == "0"
    assert console.errors == []
    page.context.close()
