"""GET /metrics: the scrape token (outlives a JWT, accepted nowhere else), the exposition's names,
labels and buckets, and the HealthMetrics figures it carries for alert rules."""

from __future__ import annotations

import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, insert, select
from typer.testing import CliRunner
from tests.budgets import ADMIN
from tests.gateways import gateway_settings, running_gateway
from tests.paths import EXAMPLES

from opsgate.cli import app as cli
from opsgate.clock import ManualClock
from opsgate.config import RouteConfig
from opsgate.metering.models import ai_operation_attempts, cost_reconciliations
from opsgate.monitoring.health import ENFORCEMENT_FAILURE, LEDGER_VERIFY
from opsgate.monitoring.hooks import record_signal
from opsgate.monitoring.models import provider_status
from opsgate.monitoring.prometheus import LATENCY_BUCKETS_S
from opsgate.providers.registry import ANTHROPIC_DEFAULT_MODEL, DEEPSEEK_DEFAULT_MODEL
from opsgate.runtime import Runtime
from opsgate.security import metrics_token
from opsgate.store.models import ai_operation_log
from opsgate.security.users import add_user


@dataclass
class Scraped:
    runtime: Runtime
    client: httpx.Client
    clock: ManualClock
    token: str

    def metrics(self, credential: str) -> httpx.Response:
        return self.client.get("/metrics", headers={"Authorization": f"Bearer {credential}"})

    def samples(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        response = self.metrics(self.token)
        assert response.status_code == 200
        found: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                found.setdefault(sample.name, []).append((sample.labels, sample.value))
        return found


@pytest.fixture
def scraped(tmp_path: Path) -> Iterator[Scraped]:
    token_file = tmp_path / "secrets" / "metrics-token"
    assert metrics_token.create(token_file)
    clock = ManualClock()
    with running_gateway(gateway_settings(tmp_path, metrics_token_file=token_file), clock) as gateway:
        yield Scraped(gateway.runtime, gateway.client, clock, token_file.read_text().strip())


def test_metrics_scrape_token_is_still_accepted_after_the_jwt_lifetime(scraped: Scraped) -> None:
    add_user(scraped.runtime.engine, scraped.clock, "ops", "operator")  # a local operator token needs its row
    operator_jwt = scraped.runtime.tokens.issue("ops", "operator")
    assert scraped.metrics(operator_jwt).status_code == 200
    assert scraped.metrics(scraped.token).status_code == 200
    settings = scraped.runtime.settings
    scraped.clock.advance(settings.access_token_ttl_s + settings.token_clock_leeway_s + 1)
    assert scraped.metrics(operator_jwt).status_code == 401
    later = scraped.metrics(scraped.token)
    assert later.status_code == 200
    assert "opsgate_ledger_entries" in later.text


def test_metrics_scrape_token_is_accepted_by_metrics_only(scraped: Scraped) -> None:
    bearer = {"Authorization": f"Bearer {scraped.token}"}
    for method, path in [("GET", "/v1/health"), ("GET", "/v1/incidents"), ("GET", "/v1/admin/toggles"),
                         ("GET", "/v1/admin/budgets"), ("POST", "/v1/operations/email-classify")]:
        answer = scraped.client.request(method, path, headers=bearer, json={"raw": "x"})
        assert answer.status_code == 401, path
        assert scraped.token not in answer.text
    for wrong in [scraped.token[:-1], scraped.token + "x", scraped.token.upper(), "x"]:
        assert scraped.metrics(wrong).status_code == 401
    assert scraped.client.get("/metrics").status_code == 401
    user_jwt = scraped.runtime.tokens.issue("alice", "user")
    assert scraped.metrics(user_jwt).status_code == 403


def _value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """The sample of ``name`` whose labels include ``labels`` (0 when absent: counters are per process)."""
    found = [v for s, v in samples.get(name, []) if labels.items() <= s.items()]
    assert len(found) <= 1, found
    return found[0] if found else 0.0


def test_metrics_follow_prometheus_naming_with_operation_labels(scraped: Scraped) -> None:
    before = scraped.samples()
    user = scraped.runtime.tokens.issue("alice", "user")
    raw = (EXAMPLES / "email-classify.eml").read_text()
    ok = scraped.client.post("/v1/operations/email-classify", json={"raw": raw},
                             headers={"Authorization": f"Bearer {user}"})
    assert ok.status_code == 200, ok.text
    refused = scraped.client.post("/v1/operations/email-classify", json={"nope": 1},
                                  headers={"Authorization": f"Bearer {user}"})
    assert refused.status_code == 422
    samples = scraped.samples()
    served = ok.json()

    def delta(name: str, **labels: str) -> float:
        return _value(samples, name, **labels) - _value(before, name, **labels)

    op = {"operation": "email-classify"}
    assert delta("opsgate_requests_total", **op, provider=served["provider"], model=served["model"],
                 status="ok", code="", variant="stable") == 1
    assert delta("opsgate_requests_total", **op, provider="", model="", status="refused",
                 code="invalid_input", variant="stable") == 1
    buckets = [float(s["le"]) for s, _ in samples["opsgate_request_duration_seconds_bucket"]
               if s["operation"] == "email-classify" and s["status"] == "ok" and s["variant"] == "stable"]
    assert buckets == [*LATENCY_BUCKETS_S, float("inf")]
    assert (buckets[0], buckets[-2]) == (0.01, 60)
    where = {**op, "provider": served["provider"], "model": served["model"]}
    assert delta("opsgate_cost_micro_usd_total", **where) == served["cost_micro_usd"]
    assert delta("opsgate_tokens_total", **where, type="output") == served["usage"]["output_tokens"] > 0
    assert delta("opsgate_provider_requests_total", provider=served["provider"], model=served["model"],
                 outcome="ok") == served["attempts"]
    assert delta("opsgate_request_duration_seconds_count", **op, status="ok", variant="stable") == 1
    every_label_value = {v for series in samples.values() for labels, _ in series for v in labels.values()}
    assert "alice" not in every_label_value
    text = scraped.metrics(scraped.token).text
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE"))
    assert {n for n, t in types.items() if t == "counter"} >= {
        "opsgate_requests_total", "opsgate_provider_requests_total", "opsgate_cost_micro_usd_total",
        "opsgate_tokens_total", "opsgate_budget_enforcement_failures_total"}
    assert all(n.endswith("_total") for n, t in types.items() if t == "counter")
    assert all(n.endswith("_seconds") for n, t in types.items() if t == "histogram")


def test_cost_is_counted_per_request_under_its_own_provider_and_model(tmp_path: Path) -> None:
    """Tester B F5: a call served by DeepSeek after a cut Claude answer, and a call that failed
    on both. The cost counter per provider and model equals ai_operation_attempts' sum: the cut
    request's worst case at anthropic (was booked at deepseek), the failed call's charges (were
    booked nowhere). The exposition stays valid for ``promtool check metrics``."""
    token_file = tmp_path / "secrets" / "metrics-token"
    assert metrics_token.create(token_file)
    chain = (f"anthropic/{ANTHROPIC_DEFAULT_MODEL}", f"deepseek/{DEEPSEEK_DEFAULT_MODEL}")
    settings = gateway_settings(tmp_path, metrics_token_file=token_file, sandbox_faults="malformed:anthropic",
                                routes={"email-classify": RouteConfig(chain=chain, max_attempts_per_target=1)})
    clock = ManualClock()
    with running_gateway(settings, clock) as gateway:
        scraped = Scraped(gateway.runtime, gateway.client, clock, token_file.read_text().strip())
        before = scraped.samples()
        body = {"raw": (EXAMPLES / "email-classify.eml").read_text()}
        user = gateway.runtime.tokens.issue("alice", "user")
        assert gateway.post("email-classify", body, token=user).status_code == 200
        gateway.sandbox.set_faults("malformed")
        failed = gateway.post("email-classify", body, token=user)
        assert failed.status_code == 502, failed.text  # both answered unusably (tester-wire F10)
        samples = scraped.samples()
        exposition = scraped.metrics(scraped.token).text
        a = ai_operation_attempts.c
        with gateway.runtime.engine.connect() as conn:
            billed = {(p, m): int(c) for p, m, c in conn.execute(
                select(a.provider, a.model, func.sum(a.cost_micro_usd)).group_by(a.provider, a.model))}
            failed_cost = conn.execute(select(ai_operation_log.c.cost_micro_usd).where(
                ai_operation_log.c.request_id == failed.json()["request_id"])).scalar_one()

    def delta(provider: str, model: str) -> float:
        where = {"operation": "email-classify", "provider": provider, "model": model}
        name = "opsgate_cost_micro_usd_total"
        return _value(samples, name, **where) - _value(before, name, **where)

    assert set(billed) == {("anthropic", ANTHROPIC_DEFAULT_MODEL), ("deepseek", DEEPSEEK_DEFAULT_MODEL)}
    assert billed[("anthropic", ANTHROPIC_DEFAULT_MODEL)] > 0 and failed_cost > 0
    assert {key: delta(*key) for key in billed} == billed
    check = subprocess.run([shutil.which("promtool") or "promtool", "check", "metrics"], input=exposition,
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_metrics_carry_the_health_figures_rules_need(scraped: Scraped) -> None:
    rt, clock = scraped.runtime, scraped.clock
    assert "opsgate_ledger_hash_chain_intact" not in scraped.samples()  # no verification yet
    record_signal(rt.engine, clock, LEDGER_VERIFY, "ledger", ok=False, detail="entry 7: hash mismatch")
    record_signal(rt.engine, clock, ENFORCEMENT_FAILURE, "email-compose", ok=False, detail="counter lost")
    with rt.engine.begin() as conn:
        conn.execute(insert(cost_reconciliations).values(
            run_id="r1", provider="deepseek", invoice_name="inv.csv", day=clock.now().date(),
            model="deepseek-chat", tracked_micro_usd=985_000, invoiced_micro_usd=1_000_000,
            difference_micro_usd=15_000, accuracy_pct="98.50", created_at=clock.now()))
        conn.execute(insert(provider_status).values(
            instance="other-replica", provider="gemini", state="open",
            unavailable_since=clock.now() - timedelta(minutes=40), updated_at=clock.now()))
    samples = scraped.samples()
    value = {name: {tuple(sorted(labels.items())): v for labels, v in series} for name, series in samples.items()}
    assert value["opsgate_ledger_hash_chain_intact"][()] == 0
    assert value["opsgate_ledger_last_verification_timestamp_seconds"][()] == clock.now().timestamp()
    assert value["opsgate_budget_enforcement_failures_total"][()] == 1
    assert value["opsgate_cost_discrepancy_ratio"][(("provider", "deepseek"),)] == 0.015
    assert value["opsgate_provider_available"][(("provider", "gemini"),)] == 0
    assert value["opsgate_provider_available"][(("provider", "anthropic"),)] == 1
    assert value["opsgate_provider_unavailable_duration_seconds"][(("provider", "gemini"),)] == 2400
    assert value["opsgate_rollout_percentage"][(("operation", "email-classify"),)] == 100


def test_breakers_are_exported_per_provider_and_per_configured_model(scraped: Scraped) -> None:
    """opsgate_model_breaker_state has one series per configured target (labels from the routes,
    never from an answer); opsgate_breaker_state is the provider's availability: open only when
    none of its configured models can be called, as the published provider status says."""
    router = scraped.runtime.router
    configured = {(t.provider, t.model) for t in scraped.runtime.rollout.variants.targets()}
    assert configured == {("anthropic", ANTHROPIC_DEFAULT_MODEL), ("deepseek", DEEPSEEK_DEFAULT_MODEL),
                          ("gemini", "gemini-3.8-flash")}  # the default routes
    router.breaker("anthropic", ANTHROPIC_DEFAULT_MODEL).cool_down(60.0)
    router.breaker("gemini", "gemini-2.5-flash").cool_down(60.0)  # a second Gemini model, as a route could add
    router.breaker("gemini", "gemini-3.8-flash").cool_down(60.0)
    samples = scraped.samples()
    per_model = {(labels["provider"], labels["model"]): v for labels, v in samples["opsgate_model_breaker_state"]}
    per_provider = {labels["provider"]: v for labels, v in samples["opsgate_breaker_state"]}
    assert per_model == {("anthropic", ANTHROPIC_DEFAULT_MODEL): 2, ("deepseek", DEEPSEEK_DEFAULT_MODEL): 0,
                         ("gemini", "gemini-2.5-flash"): 2, ("gemini", "gemini-3.8-flash"): 2}
    assert per_provider == {"anthropic": 2, "deepseek": 0, "gemini": 2}  # no model of it can be called
    router.breaker("gemini", "gemini-2.5-flash").record_success()
    per_provider = {labels["provider"]: v for labels, v in scraped.samples()["opsgate_breaker_state"]}
    assert per_provider == {"anthropic": 2, "deepseek": 0, "gemini": 0}  # one Gemini model serves


def test_metrics_token_command_creates_a_private_file_and_rotates_it(tmp_path: Path) -> None:
    path = tmp_path / "metrics-token"
    env = {"OPSGATE_METRICS_TOKEN_FILE": str(path)}
    runner = CliRunner()
    first = runner.invoke(cli, ["keys", "metrics-token"], env=env)
    assert first.exit_code == 0, first.output
    token = path.read_text().strip()
    assert len(token) >= 43 and token not in first.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = runner.invoke(cli, ["keys", "metrics-token"], env=env)
    assert again.exit_code == 0 and "kept" in again.output
    assert path.read_text().strip() == token
    rotated = runner.invoke(cli, ["keys", "metrics-token", "--rotate"], env=env)
    assert rotated.exit_code == 0, rotated.output
    assert path.read_text().strip() != token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["metrics-token"]


def test_budget_refusals_and_degraded_calls_are_counted_by_scope_kind_never_by_user(scraped: Scraped) -> None:
    from opsgate.metering.budgets import SCOPE_KINDS, set_budget
    from opsgate.metering.models import DEGRADED, budget_outcomes

    rt, clock = scraped.runtime, scraped.clock
    alice = set_budget(rt.ledger, clock, actor=ADMIN, user_id="alice", operation="*", period="day",
                       limit_micro_usd=0)
    ops = set_budget(rt.ledger, clock, actor=ADMIN, user_id="*", operation="email-compose", period="month",
                     limit_micro_usd=5, on_exhausted="cheaper")
    raw = (EXAMPLES / "email-classify.eml").read_text()
    token = {"Authorization": f"Bearer {rt.tokens.issue('alice', 'user')}"}
    refused = scraped.client.post("/v1/operations/email-classify", json={"raw": raw}, headers=token)
    assert (refused.status_code, refused.json()["code"]) == (402, "budget_exceeded")
    with rt.engine.begin() as conn:
        conn.execute(insert(budget_outcomes).values(request_id="r-degraded", budget_id=ops.id, outcome=DEGRADED,
                                                    created_at=clock.now()))
    [family] = [f for f in text_string_to_metric_families(scraped.metrics(scraped.token).text)
                if f.name == "opsgate_budget_outcomes"]
    counted = {(s.labels["scope"], s.labels["outcome"]): s.value for s in family.samples if s.name.endswith("_total")}
    assert family.type == "counter" and set(counted) == {(k, o) for k in SCOPE_KINDS for o in ("refused", "degraded")}
    assert {k: v for k, v in counted.items() if v} == {("user", "refused"): 1, ("operation", "degraded"): 1}
    assert alice.user_id not in family.samples[0].labels.values()
