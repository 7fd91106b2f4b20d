"""Every page, signed in as an operator in real Chromium: the figures shown equal the HTTP API's,
they refresh without a reload, nothing is logged to the console, and each page is screenshotted."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page
from tests.web.browsing import Console, Dashboard, screenshot, sign_in, wait_live

from opsgate.ledger.service import latest_checkpoint, log_size
from opsgate.metering.budgets import budget_statuses
from opsgate.metering.views import status_json
from opsgate.web.format import ppm_pct, usd

MISSING = "\u2013"


def pct(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f} %"


def ms(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3f} ms"


def text(page: Page, selector: str) -> str:
    return page.locator(selector).inner_text().strip()


@pytest.fixture(scope="module")
def operator(browser: Browser, dashboard: Dashboard) -> Iterator[tuple[Page, Console]]:
    console = Console()
    page = sign_in(browser, dashboard, "oscar", console)
    yield page, console
    assert console.errors == []
    page.context.close()


def open_page(page: Page, path: str, name: str) -> None:
    response = page.goto(path)
    assert response is not None and response.status == 200
    wait_live(page)
    screenshot(page, name)


def test_overview_equals_the_api(operator: tuple[Page, Console], dashboard: Dashboard) -> None:
    page, console = operator
    open_page(page, "/dashboard", "overview")
    health = dashboard.api("/v1/health")
    assert health["operationCount"] > 0
    assert text(page, "#error-rate") == pct(health["errorRate"])
    assert text(page, "#p95") == ms(health["p95Latency"])
    assert text(page, "#p99") == ms(health["p99Latency"])
    assert text(page, "#ops-per-min") == f"{health['operationCount'] / 60:.2f}"
    assert text(page, "#cost-accuracy") == pct(health["costAccuracy"])
    assert text(page, "#integrity") == "yes"
    # GET /v1/admin/budgets's own function (its router is not mounted in the app yet)
    runtime = dashboard.runtime
    budgets = [status_json(s) for s in budget_statuses(runtime.engine, runtime.clock.now())]
    assert len(budgets) == 3  # global day and month, ursula's day
    degraded = sum(c["cost_micro_usd"] for c in dashboard.degraded)  # made after the rehearsal
    assert text(page, "#spend-today") == usd(dashboard.report["rehearsal"]["operation_log"]["cost_micro_usd"]
                                             + degraded)  # one UTC day
    shown = page.locator("#budgets tbody tr").all_inner_texts()
    assert [row.split("\t")[2] for row in shown] == [usd(b["spent_micro_usd"]) for b in budgets]
    incidents = dashboard.api("/v1/incidents", params={"state": "open"})["incidents"]
    assert text(page, "#open-incidents") == str(len(incidents))
    newest = dashboard.api("/v1/admin/rollouts", user="ada")["rollouts"][0]
    assert text(page, "#rollout-stage") == f"{newest['percentage']} %"
    assert console.errors == []


@pytest.mark.parametrize(("window", "operation"), [(6 * 3600, ""), (3600, ""), (6 * 3600, "email-compose")])
def test_error_rate_and_latency_over_time_equal_the_api(operator: tuple[Page, Console], dashboard: Dashboard,
                                                        window: int, operation: str) -> None:
    page, console = operator
    suffix = f"-{operation}" if operation else ""
    open_page(page, f"/dashboard/metrics?window={window}&operation={operation}", f"metrics-{window}s{suffix}")
    params = {"window": window, **({"operation": operation} if operation else {})}
    health = dashboard.api("/v1/health", params=params)
    assert health["operationCount"] > 0
    assert text(page, "#total-count") == str(health["operationCount"])
    assert text(page, "#total-error-rate") == pct(health["errorRate"])
    assert text(page, "#total-p95") == ms(health["p95Latency"])
    assert text(page, "#total-p99") == ms(health["p99Latency"])
    assert page.locator("#chart-errors canvas").count() == 1
    assert page.locator("#chart-latency canvas").count() == 1
    assert page.locator("#chart-latency .u-legend .u-series").count() == 4  # time, p50, p95, p99
    assert console.errors == []


def test_changing_the_window_reloads_the_chart_page(operator: tuple[Page, Console]) -> None:
    page, _ = operator
    open_page(page, "/dashboard/metrics", "metrics")
    page.select_option("select[name=window]", "3600")
    page.wait_for_url(re.compile(r".*window=3600.*"))
    assert page.locator("select[name=window]").input_value() == "3600"


def test_provider_health_equals_the_api(operator: tuple[Page, Console], dashboard: Dashboard) -> None:
    page, console = operator
    open_page(page, "/dashboard/providers", "providers")
    health = dashboard.api("/v1/health")["providerAvailability"]
    metrics = dashboard.api("/metrics")
    states = {m.group(1): int(float(m.group(2)))
              for m in re.finditer(r'^opsgate_breaker_state\{provider="([^"]+)"\} (\S+)$', metrics, re.MULTILINE)}
    assert set(states) == {"anthropic", "deepseek", "gemini"}
    for name, state in states.items():
        row = page.locator(f"tr[data-provider={name}]")
        assert row.locator(".breaker").inner_text() == ["closed", "half_open", "open"][state]
        figures = health.get(name, {"available": True, "errorRate": 0.0, "latency": None})
        assert row.locator(".state").inner_text() == ("yes" if figures["available"] else "no")
        assert row.locator(".error-rate").inner_text() == pct(figures["errorRate"])
        assert row.locator(".latency").inner_text() == ms(figures["latency"])
    assert "anthropic" in health
    assert console.errors == []


def test_costs_equal_the_metered_log_and_the_reconciliation(operator: tuple[Page, Console],
                                                            dashboard: Dashboard) -> None:
    page, console = operator
    open_page(page, "/dashboard/costs", "costs")
    health = dashboard.api("/v1/health")
    assert health["costAccuracy"] is not None and health["costAccuracy"] < 100
    assert text(page, "#cost-accuracy") == pct(health["costAccuracy"])
    rows = dashboard.reconciliation.rows
    table = page.locator("table.reconciliation[data-provider=anthropic] tbody tr").all_inner_texts()
    assert [r.split("\t")[2:5] for r in table] == [
        [usd(r.tracked_micro_usd), usd(int(r.invoiced_micro_usd)), usd(int(r.difference_micro_usd))] for r in rows]
    tracked = sum(r.tracked_micro_usd for r in rows)
    shown = page.locator("#cost-by_provider tr[data-key=anthropic] .cost").inner_text()
    assert shown == usd(tracked)
    assert page.locator("#chart-cost-days canvas").count() == 1
    assert console.errors == []


def test_costs_show_each_budget_and_the_degraded_calls(operator: tuple[Page, Console],
                                                       dashboard: Dashboard) -> None:
    page, console = operator
    open_page(page, "/dashboard/costs", "costs-budgets")
    statuses = {f"{s.budget.scope}/{s.budget.period}": s
                for s in budget_statuses(dashboard.runtime.engine, dashboard.runtime.clock.now())}
    assert set(statuses) == {"global/day", "global/month", "user:ursula/day"}
    for key, s in statuses.items():
        row = page.locator(f"#cost-budgets tr[data-key='{key}']")
        assert [row.locator(f".{c}").inner_text() for c in ("spent", "reserved", "left", "refused", "degraded")] == [
            usd(s.spent_micro_usd), usd(s.reserved_micro_usd), usd(s.left_micro_usd),
            str(s.refused_today), str(s.degraded_today)]
    ursula = statuses["user:ursula/day"]
    assert (ursula.budget.on_exhausted, ursula.degraded_today, ursula.refused_today) == ("cheaper", 2, 1)
    assert ursula.left_micro_usd == 100 and ursula.spent_micro_usd == sum(c["cost_micro_usd"] for c in dashboard.degraded)
    assert "cheaper" in page.locator("#cost-budgets tr[data-key='user:ursula/day']").inner_text()
    assert text(page, "#degraded-count") == "2"
    rows = page.locator("#degraded-calls tbody tr")
    assert rows.count() == 2
    shown = {rows.nth(i).get_attribute("data-key"): rows.nth(i).locator(".served").inner_text() for i in range(2)}
    assert shown == {c["request_id"]: f"{c['provider']}/{c['model']}" for c in dashboard.degraded}
    assert {c["provider"] for c in dashboard.degraded} == {"deepseek"}
    assert console.errors == []


def test_adoption_equals_the_api(operator: tuple[Page, Console], dashboard: Dashboard) -> None:
    page, console = operator
    open_page(page, "/dashboard/adoption", "adoption")
    toggles = dashboard.api("/v1/admin/toggles", user="ada")["toggles"]
    assert len(toggles) == 9
    for t in toggles:
        row = page.locator(f"tr[data-operation={t['operation']}]")
        assert row.locator(".percentage").inner_text() == f"{t['rollout_percentage']} %"
        assert row.locator(".eligible").inner_text() == str(t["adoption"]["eligible"])
        assert row.locator(".opted-in").inner_text() == str(t["adoption"]["opted_in"])
        assert row.locator(".rate").inner_text() == ppm_pct(t["adoption"]["rate_ppm"])
    assert console.errors == []


def test_rollouts_show_the_decision_history(operator: tuple[Page, Console], dashboard: Dashboard) -> None:
    page, console = operator
    open_page(page, "/dashboard/rollouts", "rollouts-operator")
    rollouts = dashboard.api("/v1/admin/rollouts", user="ada")["rollouts"]
    first = next(r for r in rollouts if r["id"] == 1)
    card = page.locator("#rollout-1")
    assert card.locator(".state").inner_text() == first["state"] == "rolled_back"
    stages = len(first["plan"]["stages"])  # numbered from 1 over the plan's stages, as `rollout status` does
    assert card.locator(".stage").inner_text() == first["stage"] == f"{first['stage_index'] + 1}/{stages}"
    assert card.locator("table.history tbody tr").count() == len(first["history"])
    newest = card.locator("table.history tbody tr").first.text_content() or ""
    assert first["history"][-1]["reason"] in newest
    assert "canary_error_ppm=" in (card.locator("table.history").text_content() or "")
    assert page.locator("button.rollback").count() == 0  # operators see, admins change
    assert console.errors == []


def test_incidents_equal_the_api(operator: tuple[Page, Console], dashboard: Dashboard) -> None:
    page, console = operator
    open_page(page, "/dashboard/incidents", "incidents")
    found = dashboard.api("/v1/incidents")["incidents"]
    assert found
    for state in ("open", "acknowledged", "resolved"):
        assert text(page, f"#count-{state}") == str(sum(1 for i in found if i["state"] == state))
    assert page.locator("#incidents tbody tr").count() == len(found)
    rollout_incident = next(i for i in found if i["rule"] == "rollout")
    page.click(f"a[href='/dashboard/incidents/{rollout_incident['id']}']")
    page.wait_for_url(f"**/dashboard/incidents/{rollout_incident['id']}")
    detail = dashboard.api(f"/v1/incidents/{rollout_incident['id']}")
    assert page.locator("#timeline li").count() == len(detail["timeline"])
    assert page.locator("#notifications tbody tr").count() == len(detail["notifications"])
    screenshot(page, "incident")
    assert console.errors == []


def test_ledger_equals_the_store(operator: tuple[Page, Console], dashboard: Dashboard) -> None:
    page, console = operator
    open_page(page, "/dashboard/ledger", "ledger")
    engine = dashboard.runtime.engine
    entries = int(re.search(r"^opsgate_ledger_entries (\S+)$", dashboard.api("/metrics"), re.MULTILINE).group(1).split(".")[0])
    assert int(text(page, "#ledger-entries")) == entries == log_size(engine)
    checkpoint = latest_checkpoint(engine)
    assert checkpoint is not None
    assert text(page, "#ledger-checkpoint") == str(checkpoint.size)
    assert text(page, "#ledger-root") == checkpoint.root.hex()
    anchored = max(int(p.name.split(".")[0]) for p in dashboard.anchor_dir.glob("*.checkpoint"))
    assert text(page, "#ledger-unanchored") == str(entries - anchored)
    assert text(page, "#ledger-verified") == "yes"
    assert page.locator("#ledger-recent tbody tr").count() == 12
    assert console.errors == []


def test_figures_refresh_without_a_reload(operator: tuple[Page, Console], dashboard: Dashboard) -> None:
    page, console = operator
    open_page(page, "/dashboard/incidents", "incidents-live")
    found = dashboard.api("/v1/incidents", params={"state": "open"})["incidents"]
    assert found, "the rehearsal leaves an open incident"
    before = int(text(page, "#count-acknowledged"))
    page.evaluate("window.__sameDocument = true")
    dashboard.api(f"/v1/incidents/{found[0]['id']}/ack", method="POST")
    page.wait_for_function(f"() => document.getElementById('count-acknowledged').textContent === '{before + 1}'",
                           timeout=15_000)
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    assert text(page, "#count-open") == str(len(found) - 1)
    assert console.errors == []


def test_criteria_page_shows_the_nine_rows_with_their_evidence(operator: tuple[Page, Console],
                                                               dashboard: Dashboard) -> None:
    page, console = operator
    response = page.goto("/dashboard/criteria")
    assert response is not None and response.status == 200
    screenshot(page, "criteria")
    doc = page.request.get("/dashboard/data/criteria").json()["criteria"]
    assert [r["criterion"] for r in doc] == [
        "Test Pass Rate", "Code Coverage", "Error Rate", "P99 Latency", "Average Latency",
        "Cost Accuracy", "Security Issues", "Hash Chain Integrity", "Availability"]
    rows = page.locator("#criteria tbody tr")
    assert rows.count() == 9
    for i, row in enumerate(doc):
        cells = [c.strip() for c in rows.nth(i).locator("td").all_inner_texts()]
        status = "no evidence" if row["status"] == "n/a" else row["status"]
        assert cells == [row["criterion"], row["target"], row["actual"], status, row["evidence"]]
    by_name = {r["criterion"]: r for r in doc}
    assert by_name["Cost Accuracy"]["evidence"].startswith("latest reconciliation of ")
    assert by_name["Hash Chain Integrity"]["status"] == "pass"
    assert by_name["Error Rate"]["evidence"].startswith("window ")
    assert console.errors == []
