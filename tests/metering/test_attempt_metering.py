"""Every request a provider may have billed is metered (issue 16, item 0), on each wire format,
through a real gateway (HTTP, SQLite, ledger) against the provider sandboxes and their faults:

- a body cut after its 200 (``malformed:<p>``, first answer cut in half): the request's worst
  case, flagged ``estimated``, never 0;
- an unusable 200 followed by a successful fallback: the cut request's worst case plus the
  fallback's reported usage, each on its own provider's row;
- a timeout followed by a successful retry (``timeout-once:<p>``): the timed-out request's worst
  case plus the retry's usage; the retry first extended the reservation (ledger ``extend``);
  with a fallback left, the fallback answers instead of a retry, charged beside that worst case;
- a refusal that reported its usage (``safety-blocked``): that usage, not the worst case.

Each call's budget spend equals the sum of its attempt rows, nothing stays reserved, and an
invoice in the provider's own export format holding those requests reconciles at 100 %.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select
from tests.budgets import ADMIN
from tests.gateways import gateway_settings, running_gateway
from tests.paths import EXAMPLES

from opsgate.clock import SystemClock
from opsgate.config import RouteConfig, Settings
from opsgate.metering.attempts import ESTIMATED, REPORTED
from opsgate.metering.budgets import set_budget
from opsgate.metering.cost import cost_micro_usd
from opsgate.metering.invoices import (
    InvoiceLine,
    parse_anthropic_cost_report,
    parse_deepseek_usage_csv,
    parse_gcp_billing_csv,
)
from opsgate.metering.models import ANY, ai_operation_attempts, budget_counters, budget_reservations
from opsgate.metering.prices import PriceBook
from opsgate.metering.reconcile import reconcile
from opsgate.metering.worstcase import attempt_worst_case_micro_usd
from opsgate.operations import get_operation
from opsgate.providers.base import Usage
from opsgate.providers.registry import (
    ANTHROPIC_DEFAULT_MODEL,
    DEEPSEEK_DEFAULT_MODEL,
    GEMINI_DEFAULT_MODEL,
)
from opsgate.runtime import Runtime
from opsgate.security.auth import TokenService
from opsgate.store.db import make_engine
from opsgate.store.models import ledger_entries

OP = "email-classify"
BODY = {"raw": (EXAMPLES / "email-classify.eml").read_text()}
MODELS = {"anthropic": ANTHROPIC_DEFAULT_MODEL, "deepseek": DEEPSEEK_DEFAULT_MODEL,
          "gemini": GEMINI_DEFAULT_MODEL}
NEXT = {"anthropic": "deepseek", "deepseek": "gemini", "gemini": "anthropic"}


@dataclass
class Run:
    """One governed call's HTTP answer and what the database holds about it."""

    response: httpx.Response
    attempts: list[dict]
    spent: int
    reserved: int
    state: str
    extends: list[dict]
    worst: dict[str, int]  # provider -> the request's worst case at its first target's price


def _run(tmp_path: Path, faults: str, chain: list[str], **route: object) -> Run:
    settings = gateway_settings(tmp_path, sandbox_faults=faults,
                                routes={OP: RouteConfig(chain=tuple(f"{p}/{MODELS[p]}" for p in chain),
                                                        **route)})  # type: ignore[arg-type]
    with running_gateway(settings) as gateway:
        runtime: Runtime = gateway.runtime
        set_budget(runtime.ledger, SystemClock(), actor=ADMIN, user_id=ANY, operation=ANY, period="day",
                   limit_micro_usd=10**9)
        token = TokenService(settings, SystemClock()).issue("alice", "user")
        response = gateway.client.post(f"/v1/operations/{OP}", json=BODY,
                                       headers={"Authorization": f"Bearer {token}"})
        return _collect(runtime, settings, response, chain)


def _collect(runtime: Runtime, settings: Settings, response: httpx.Response, chain: list[str]) -> Run:
    rid = response.json()["request_id"]
    with runtime.engine.connect() as conn:
        rows = conn.execute(select(ai_operation_attempts).where(
            ai_operation_attempts.c.request_id == rid).order_by(ai_operation_attempts.c.seq))
        attempts = [dict(r._mapping) for r in rows]
        spent, reserved = conn.execute(select(budget_counters.c.spent_micro_usd,
                                              budget_counters.c.reserved_micro_usd)).one()
        state = conn.execute(select(budget_reservations.c.state)).scalar_one()
        bodies = [json.loads(b) for b in conn.execute(select(ledger_entries.c.body)).scalars()]
    op = get_operation(OP)
    prepared, _ = runtime.gateway.minimise(op, op.prepare(op.Input.model_validate(BODY)))
    request = prepared.request  # as really sent: personal data pseudonymised
    book = PriceBook.from_settings(settings)
    worst = {p: attempt_worst_case_micro_usd(request, f"{p}/{MODELS[p]}", book) for p in chain}
    return Run(response, attempts, spent, reserved, state,
               [b for b in bodies if b["kind"] == "extend"], worst)


def _reported_cost(row: dict, settings_model: str, provider: str) -> int:
    usage = Usage(input_tokens=row["input_tokens"], output_tokens=row["output_tokens"],
                  cache_write_tokens=row["cache_write_tokens"], cache_read_tokens=row["cache_read_tokens"])
    price = PriceBook.from_settings(Settings()).price_at(provider, settings_model, datetime.now(UTC),
                                                         usage.total_tokens - usage.output_tokens)
    return cost_micro_usd(usage, price.price)


# --- invoices in each provider's export format ------------------------------------------------

def _invoice(provider: str, day: date, billed: dict[str, int]) -> list[InvoiceLine]:
    """``billed`` (model -> micro-USD) written as ``provider``'s export and read back."""
    if provider == "anthropic":
        results = [{"currency": "USD", "amount": str(Decimal(m) / 10_000), "model": model,
                    "cost_type": "tokens", "token_type": "uncached_input_tokens",
                    "description": f"{model} Usage"} for model, m in billed.items()]
        report = {"data": [{"starting_at": f"{day}T00:00:00Z", "ending_at": f"{day}T23:59:59Z",
                            "results": results}], "has_more": False}
        return parse_anthropic_cost_report(json.dumps(report))
    out = io.StringIO()
    if provider == "deepseek":
        writer = csv.writer(out)
        writer.writerow(["date", "model", "prompt_cache_hit_tokens", "prompt_cache_miss_tokens",
                         "completion_tokens", "cost_usd", "currency"])
        for model, m in billed.items():
            writer.writerow([day.isoformat(), model, 0, 0, 0, str(Decimal(m) / 1_000_000), "USD"])
        return parse_deepseek_usage_csv(out.getvalue())
    writer = csv.writer(out)
    writer.writerow(["service.description", "sku.description", "usage_start_time", "cost", "currency"])
    for model, m in billed.items():
        sku = f"{model.replace('-', ' ').title()} Input Text Tokens"
        writer.writerow(["Gemini API", sku, f"{day} 00:00:00 UTC", str(Decimal(m) / 1_000_000), "USD"])
    return parse_gcp_billing_csv(out.getvalue(), [GEMINI_DEFAULT_MODEL])


def _reconciles(tmp_path: Path, run: Run, billed: dict[str, dict[str, int]]) -> list[str]:
    """Accuracy of every reconciled row, per provider of ``billed`` (provider -> model -> µUSD)."""
    engine = _engine(tmp_path)
    day = datetime.now(UTC).date()
    accuracies = []
    for provider, lines in billed.items():
        report = reconcile(engine, SystemClock(), provider, "test", _invoice(provider, day, lines))
        accuracies += [r.accuracy_pct for r in report.rows]
    engine.dispose()
    return accuracies


def _engine(tmp_path: Path) -> Engine:
    return make_engine(f"sqlite:///{tmp_path / 'opsgate.db'}")


@pytest.fixture(params=["anthropic", "deepseek", "gemini"])
def provider(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param


def test_a_body_cut_after_its_200_is_charged_its_worst_case_flagged(tmp_path: Path, provider: str) -> None:
    run = _run(tmp_path, f"malformed:{provider}", [provider], max_attempts_per_target=1)

    # an answer arrived but could not be used: 502 provider_bad_response, not 503 (tester-wire F10)
    assert run.response.status_code == 502 and run.response.json()["code"] == "provider_bad_response"
    [cut] = run.attempts
    assert (cut["provider"], cut["billing"], cut["outcome"]) == (provider, ESTIMATED, "malformed_response")
    assert cut["cost_micro_usd"] == run.worst[provider] > 0
    assert (run.spent, run.reserved, run.state) == (run.worst[provider], 0, "unknown_usage")
    # the provider billed the full answer it generated (any amount up to the worst case)
    billed = {provider: {MODELS[provider]: run.worst[provider] // 3}}
    assert _reconciles(tmp_path, run, billed) == ["100.00"]


def test_an_unusable_200_then_a_fallback_charges_both_on_their_own_providers(
    tmp_path: Path, provider: str
) -> None:
    fallback = NEXT[provider]
    run = _run(tmp_path, f"malformed:{provider}", [provider, fallback], max_attempts_per_target=1)

    assert run.response.status_code == 200, run.response.text
    cut, served = run.attempts
    assert (cut["provider"], cut["billing"], cut["cost_micro_usd"]) == (provider, ESTIMATED, run.worst[provider])
    assert (served["provider"], served["billing"]) == (fallback, REPORTED)
    assert served["cost_micro_usd"] == _reported_cost(served, MODELS[fallback], fallback) > 0
    assert run.response.json()["cost_micro_usd"] == run.spent == cut["cost_micro_usd"] + served["cost_micro_usd"]
    assert run.reserved == 0 and run.state == "unknown_usage"
    # the fallback first extended the hold to cover what the cut request may cost plus its own worst case
    [extend] = run.extends
    assert extend["held_micro_usd"] == run.worst[provider] + run.worst[fallback]
    billed = {provider: {MODELS[provider]: run.worst[provider] // 2},
              fallback: {MODELS[fallback]: served["cost_micro_usd"]}}
    assert _reconciles(tmp_path, run, billed) == ["100.00", "100.00"]


def test_a_timeout_then_a_successful_retry_charges_the_timed_out_request_too(
    tmp_path: Path, provider: str
) -> None:
    run = _run(tmp_path, f"timeout-once:{provider}", [provider], timeout_s=1.0,
               max_attempts_per_target=2, total_timeout_s=20.0)

    assert run.response.status_code == 200, run.response.text
    timed_out, retried = run.attempts
    assert (timed_out["billing"], timed_out["outcome"]) == (ESTIMATED, "timeout")
    assert timed_out["cost_micro_usd"] == run.worst[provider]
    assert retried["billing"] == REPORTED
    assert retried["cost_micro_usd"] == _reported_cost(retried, MODELS[provider], provider) > 0
    assert run.spent == timed_out["cost_micro_usd"] + retried["cost_micro_usd"] == run.response.json()["cost_micro_usd"]
    [extend] = run.extends  # the retry could be billed too: the hold doubled before it left
    assert (extend["extend_micro_usd"], extend["held_micro_usd"]) == (run.worst[provider], 2 * run.worst[provider])
    billed = {provider: {MODELS[provider]: retried["cost_micro_usd"] + retried["cost_micro_usd"] // 4}}
    assert _reconciles(tmp_path, run, billed) == ["100.00"]


def test_a_timeout_with_a_fallback_left_falls_back_and_charges_the_timed_out_request_too(
    tmp_path: Path, provider: str
) -> None:
    """Tester B finding 3: the timed-out request is not retried while the chain has another
    target; the client gets the fallback's answer, and the timed-out request keeps its flagged
    worst case."""
    fallback = NEXT[provider]
    run = _run(tmp_path, f"timeout-once:{provider}", [provider, fallback], timeout_s=1.0,
               max_attempts_per_target=3, total_timeout_s=20.0)

    assert run.response.status_code == 200, run.response.text
    timed_out, served = run.attempts
    assert (timed_out["provider"], timed_out["billing"], timed_out["outcome"]) == (provider, ESTIMATED, "timeout")
    assert timed_out["cost_micro_usd"] == run.worst[provider]
    assert (served["provider"], served["billing"]) == (fallback, REPORTED)
    assert served["cost_micro_usd"] == _reported_cost(served, MODELS[fallback], fallback) > 0
    assert run.spent == timed_out["cost_micro_usd"] + served["cost_micro_usd"] == run.response.json()["cost_micro_usd"]
    assert run.reserved == 0


def test_a_refusal_that_reported_its_usage_is_charged_that_usage(tmp_path: Path, provider: str) -> None:
    run = _run(tmp_path, "safety-blocked", [provider], max_attempts_per_target=1)

    assert run.response.status_code == 422 and run.response.json()["code"] == "content_filtered"
    [refused] = run.attempts
    assert (refused["billing"], refused["outcome"]) == (REPORTED, "content_filtered")
    assert refused["input_tokens"] > 0 and refused["output_tokens"] == 0
    cost = _reported_cost(refused, MODELS[provider], provider)
    assert 0 < cost == refused["cost_micro_usd"] == run.spent < run.worst[provider]
    assert run.state == "settled" and run.reserved == 0
    assert _reconciles(tmp_path, run, {provider: {MODELS[provider]: cost}}) == ["100.00"]


@pytest.mark.parametrize(("wire", "served"), [("anthropic", "claude-opus-4-1-20250805"),
                                             ("deepseek", "deepseek-v4-pro")])
def test_a_refusal_by_a_substituted_model_is_priced_at_the_model_that_served_it(
    tmp_path: Path, wire: str, served: str,
) -> None:
    """Tester-wire F8: the refusal's 200 names the model that answered; the attempt row keeps it
    and its reported usage is charged at that model's price, not the requested one's."""
    run = _run(tmp_path, f"safety-blocked,substitute:{wire}:{served}", [wire], max_attempts_per_target=1)

    assert run.response.status_code == 422 and run.response.json()["code"] == "content_filtered"
    [refused] = run.attempts
    assert (refused["model"], refused["served_model"], refused["billing"]) == (MODELS[wire], served, REPORTED)
    cost = _reported_cost(refused, served, wire)
    assert 0 < cost == refused["cost_micro_usd"] == run.spent
    assert cost > _reported_cost(refused, MODELS[wire], wire)  # the dearer served model's price
    assert run.state == "settled" and run.reserved == 0


def test_an_invoice_above_what_the_flagged_requests_can_explain_is_a_discrepancy(tmp_path: Path) -> None:
    run = _run(tmp_path, "malformed:deepseek", ["deepseek"], max_attempts_per_target=1)
    worst = run.worst["deepseek"]
    engine = _engine(tmp_path)
    day = datetime.now(UTC).date()
    report = reconcile(engine, SystemClock(), "deepseek", "test",
                       _invoice("deepseek", day, {DEEPSEEK_DEFAULT_MODEL: 2 * worst}))
    engine.dispose()
    [row] = report.rows
    assert (row.tracked_micro_usd, row.invoiced_micro_usd, row.discrepant) == (worst, 2 * worst, True)
    assert row.accuracy_pct == "50.00"


def test_a_substituted_model_reconciles_against_its_own_invoice_line(tmp_path: Path) -> None:
    """Tester B F4, end to end: Claude serves the Opus request with Sonnet 4.5 (a dated
    snapshot), the call is priced at Sonnet's price, and the export lists it under Sonnet's
    dated name: reconciled at 100 %, with no row for the model asked for."""
    served = "claude-sonnet-4-5-20250929"
    run = _run(tmp_path, f"substitute:anthropic:{served}", ["anthropic"], max_attempts_per_target=1)

    assert run.response.status_code == 200, run.response.text
    [row] = run.attempts
    assert (row["model"], row["served_model"]) == (ANTHROPIC_DEFAULT_MODEL, served)
    assert row["cost_micro_usd"] == _reported_cost(row, "claude-sonnet-4-5", "anthropic") > 0
    engine = _engine(tmp_path)
    day = datetime.now(UTC).date()
    report = reconcile(engine, SystemClock(), "anthropic", "test",
                       _invoice("anthropic", day, {served: row["cost_micro_usd"]}))
    engine.dispose()
    assert [(r.model, r.tracked_micro_usd, r.accuracy_pct) for r in report.rows] == [
        ("claude-sonnet-4-5", row["cost_micro_usd"], "100.00")]
