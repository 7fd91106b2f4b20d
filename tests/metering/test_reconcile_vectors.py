"""Invoice reconciliation with export files in each provider's format (tests/vectors/invoices)."""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from opsgate.clock import SystemClock
from opsgate.metering.attempts import ESTIMATED, REPORTED, AttemptCharge
from opsgate.metering.cli import costs_app
from opsgate.metering.cost import cost_micro_usd
from opsgate.metering.invoices import InvoiceFormatError, InvoiceLine, parse_invoice
from opsgate.metering.models import ai_operation_attempts, cost_reconciliations
from opsgate.metering.prices import PriceTable
from opsgate.metering.reconcile import reconcile
from opsgate.monitoring.health import latest_discrepancies
from opsgate.providers.base import Usage

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "invoices"
FILES = {"anthropic": "anthropic_cost_report.json", "deepseek": "deepseek_usage.csv",
         "gemini": "gemini_billing_export.csv"}
CALLS = json.loads((VECTORS / "calls.json").read_text())


def _track_calls(engine: Engine) -> None:
    """Write the vector calls into ai_operation_attempts as the pipeline would (one billed request
    per call, cost metered at call)."""
    prices = PriceTable.load()
    assert prices.version == CALLS["price_table_version"]
    rows = []
    for i, call in enumerate(CALLS["calls"]):
        usage = Usage(**call["usage"])
        cost = cost_micro_usd(usage, prices.price_for(call["model"]))
        charge = AttemptCharge(0, call["provider"], call["model"], None, "ok", REPORTED, usage, cost)
        rows.append(charge.row(f"req-{i}", datetime.fromisoformat(call["at"])))
    with engine.begin() as conn:
        conn.execute(ai_operation_attempts.insert(), rows)


@pytest.mark.parametrize("provider", sorted(FILES))
def test_correctly_tracked_usage_reconciles_at_100_percent(store: Engine, provider: str) -> None:
    _track_calls(store)
    lines = parse_invoice(provider, VECTORS / FILES[provider])
    report = reconcile(store, SystemClock(), provider, FILES[provider], lines)
    expected = [(date.fromisoformat(d), m, cost) for d, m, cost in CALLS["expected"][provider]]
    assert [(r.day, r.model, r.tracked_micro_usd) for r in report.rows] == expected
    assert [(r.day, r.model, r.invoiced_micro_usd) for r in report.rows] == expected
    assert {(r.difference_micro_usd, r.accuracy_pct, r.discrepant) for r in report.rows} == {
        (0, "100.00", False)}
    with store.connect() as conn:
        stored = conn.execute(select(cost_reconciliations.c.run_id, cost_reconciliations.c.model)
                              ).all()
    assert len(stored) == len(expected) and {r.run_id for r in stored} == {report.run_id}


def test_an_altered_export_row_shows_the_exact_discrepancy(store: Engine, tmp_path: Path) -> None:
    _track_calls(store)
    altered = tmp_path / "deepseek.csv"
    text = (VECTORS / FILES["deepseek"]).read_text()
    altered.write_text(text.replace(",0.00504,", ",0.00604,"))
    report = reconcile(store, SystemClock(), "deepseek", altered.name,
                       parse_invoice("deepseek", altered))
    chat = next(r for r in report.rows if r.model == "deepseek-chat")
    assert (chat.tracked_micro_usd, chat.invoiced_micro_usd, chat.difference_micro_usd) == (
        5040, 6040, 1000)
    assert chat.accuracy_pct == "83.44" and chat.discrepant and report.discrepant
    other = next(r for r in report.rows if r.model == "deepseek-reasoner")
    assert (other.accuracy_pct, other.discrepant) == ("100.00", False)


def test_a_difference_within_one_percent_is_not_a_discrepancy(store: Engine, tmp_path: Path) -> None:
    _track_calls(store)
    altered = tmp_path / "gemini.csv"
    text = (VECTORS / FILES["gemini"]).read_text()
    altered.write_text(text.replace(",0.00024,", ",0.000246,"))  # 665 -> 671 micro-USD (0.89 %)
    report = reconcile(store, SystemClock(), "gemini", altered.name, parse_invoice("gemini", altered))
    (row,) = report.rows
    assert (row.difference_micro_usd, row.accuracy_pct, row.discrepant) == (6, "99.11", False)


def test_cli_prints_the_table_and_exits_1_on_a_discrepancy(
    store: Engine, store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    _track_calls(store)
    monkeypatch.setenv("OPSGATE_DATABASE_URL", store_url)
    runner = CliRunner()
    ok = runner.invoke(costs_app, ["--provider", "anthropic", "--invoice",
                                   str(VECTORS / FILES["anthropic"])])
    assert ok.exit_code == 0, ok.output
    assert "claude-opus-4-5" in ok.output and "100.00 %" in ok.output
    altered = tmp_path / "report.json"
    altered.write_text((VECTORS / FILES["anthropic"]).read_text().replace('"2.0"', '"2.5"'))
    bad = runner.invoke(costs_app, ["--provider", "anthropic", "--invoice", str(altered)])
    assert bad.exit_code == 1 and "DISCREPANCY" in bad.output


def test_requests_are_matched_by_the_model_that_served_them(store: Engine) -> None:
    """Tester B F4: three calls asked for claude-opus-5; Anthropic served them with a dated opus
    snapshot, sonnet-4-5 and haiku-4-5, priced each at its own model, and invoiced them so. A
    timed-out request (no served model reported) counts under the model it asked for."""
    at = datetime.fromisoformat("2026-12-05T10:00:00+00:00")
    asked = "claude-opus-5"
    charges = [AttemptCharge(0, "anthropic", asked, "claude-opus-5-20260724", "ok", REPORTED, Usage(), 88_855),
               AttemptCharge(0, "anthropic", asked, "claude-sonnet-4-5", "ok", REPORTED, Usage(), 4_500),
               AttemptCharge(0, "anthropic", asked, "Claude-Haiku-4-5", "ok", REPORTED, Usage(), 1_500),
               AttemptCharge(1, "anthropic", asked, None, "timeout", ESTIMATED, Usage(), 20_000)]
    with store.begin() as conn:
        conn.execute(ai_operation_attempts.insert(),
                     [c.row(f"req-{i}", at) for i, c in enumerate(charges)])
    day = at.date()
    lines = [InvoiceLine(day, "claude-opus-5", Decimal(88_855 + 7_000)),
             InvoiceLine(day, "claude-sonnet-4-5-20250929", Decimal(4_500)),  # the export's dated name
             InvoiceLine(day, "claude-haiku-4-5", Decimal(1_500))]
    report = reconcile(store, SystemClock(), "anthropic", "inv_anth.json", lines)
    assert [(r.model, r.tracked_micro_usd, r.invoiced_micro_usd, r.accuracy_pct) for r in report.rows] == [
        ("claude-haiku-4-5", 1_500, 1_500, "100.00"),
        ("claude-opus-5", 95_855, 95_855, "100.00"),
        ("claude-sonnet-4-5", 4_500, 4_500, "100.00")]
    assert not report.discrepant


def test_malformed_exports_are_refused(tmp_path: Path) -> None:
    wrong = tmp_path / "x.csv"
    wrong.write_text("day,model,cost\n2026-11-30,deepseek-chat,1\n")
    with pytest.raises(InvoiceFormatError, match="missing column"):
        parse_invoice("deepseek", wrong)
    eur = tmp_path / "eur.csv"
    eur.write_text((VECTORS / FILES["deepseek"]).read_text().replace(",USD", ",EUR"))
    with pytest.raises(InvoiceFormatError, match="USD"):
        parse_invoice("deepseek", eur)


def test_an_export_that_is_not_utf8_is_one_line_and_exit_2(tmp_path: Path) -> None:
    latin1 = tmp_path / "usage.csv"
    latin1.write_bytes((VECTORS / FILES["deepseek"]).read_text().replace("USD", "USD é").encode("latin-1"))
    with pytest.raises(InvoiceFormatError, match=r"^usage.csv is not UTF-8 text \(byte \d+ cannot be decoded\)$"):
        parse_invoice("deepseek", latin1)
    result = CliRunner().invoke(costs_app, ["--provider", "deepseek", "--invoice", str(latin1)])
    assert result.exit_code == 2 and result.output.strip().startswith("error: usage.csv is not UTF-8 text")


DEEPSEEK_HEADER = "date,model,prompt_cache_hit_tokens,prompt_cache_miss_tokens,completion_tokens,cost_usd,currency\n"


def test_a_day_whose_invoice_is_below_zero_is_a_discrepancy_never_over_100_percent(store: Engine) -> None:
    """Tester-ops F5: an invoice of -5 USD against nothing tracked read accuracy 200 %, exported a
    discrepancy ratio of -1.0 (the shipped alert rule never fires on it) and resolved the open
    cost-discrepancy incident. Credits and adjustments are lines of their own (Cloud Billing's
    cost_type adjustment, rounding_error), so a day can sum below 0: it is compared by magnitude."""
    day = date(2026, 12, 5)
    at = datetime.fromisoformat("2026-12-05T10:00:00+00:00")
    with store.begin() as conn:
        conn.execute(ai_operation_attempts.insert(), [
            AttemptCharge(0, "deepseek", "deepseek-chat", None, "ok", REPORTED, Usage(), 1_000).row("req-0", at)])
    credit = reconcile(store, SystemClock(), "deepseek", "neg.csv", [InvoiceLine(day, "deepseek-flash", Decimal(-5_000_000))])
    assert [(r.model, r.tracked_micro_usd, r.invoiced_micro_usd, r.difference_micro_usd, r.accuracy_pct, r.discrepant)
            for r in credit.rows] == [("deepseek-chat", 1_000, 0, -1_000, "0.00", True),
                                      ("deepseek-flash", 0, -5_000_000, -5_000_000, "0.00", True)]
    with store.connect() as conn:
        assert latest_discrepancies(conn) == {"deepseek": Decimal(5_001_000 * 100) / 5_000_000}
    mixed = reconcile(store, SystemClock(), "deepseek", "mixed.csv",  # a credit smaller than the day's cost
                      [InvoiceLine(day, "deepseek-chat", Decimal(1_100)), InvoiceLine(day, "deepseek-chat", Decimal(-100))])
    assert [(r.invoiced_micro_usd, r.accuracy_pct, r.discrepant) for r in mixed.rows] == [(1_000, "100.00", False)]


@pytest.mark.parametrize(("cost", "problem"), [
    ("1e400", "line 2: cost_usd must be a decimal number (ASCII digits, an optional '.' and leading '-'), "
              "or one in scientific notation with an exponent of at most two digits (1.2e-05)"),
    ("1e99", "big.csv: its amounts add up to more than 1,000,000,000 USD"),
    ("NaN", "line 2: cost_usd must be a decimal number"),
    ("99999999999999999999999999999999.123456789", "line 2: cost_usd must be a decimal number"),
    ("99999999999999999999999999999999", "big.csv: its amounts add up to more than 1,000,000,000 USD"),
])
def test_an_amount_outside_the_number_rules_is_one_line_and_exit_2(tmp_path: Path, cost: str, problem: str) -> None:
    """Tester-ops F7: 1e400 and a 32-digit amount ended in an OverflowError traceback (SQLite
    INTEGER); amounts follow the grammar and bound ``opsgate budgets set`` uses."""
    big = tmp_path / "big.csv"
    big.write_text(f"{DEEPSEEK_HEADER}2026-12-05,deepseek-flash,0,100,10,{cost},USD\n")
    with pytest.raises(InvoiceFormatError) as info:
        parse_invoice("deepseek", big)
    assert str(info.value).startswith(problem)
    result = CliRunner().invoke(costs_app, ["--provider", "deepseek", "--invoice", str(big)])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [f"error: {info.value}"]


@pytest.mark.parametrize(("cost", "micro_usd"), [("1.2e-05", 12), ("4.2E-5", 42), ("-3e-06", -3), ("0.000012", 12)])
def test_an_amount_in_scientific_notation_is_read_exactly(tmp_path: Path, cost: str, micro_usd: int) -> None:
    """BigQuery's CSV download writes a small FLOAT64 cost as ``1.2e-05``: read exactly, not refused."""
    export = tmp_path / "gcp.csv"
    export.write_text("usage_start_time,service.description,sku.description,cost,currency\n"
                      f"2026-12-05 10:00:00 UTC,Gemini API,Generate content input token count gemini 2.0 flash,{cost},USD\n")
    [line] = parse_invoice("gemini", export)
    assert line.cost_micro_usd == Decimal(micro_usd)


def test_a_json_export_nested_deeper_than_bodies_may_be_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Tester-ops F7: '[' * 100000 ended in a RecursionError traceback; a JSON export follows the
    nesting rule of every HTTP body (bodies.MAX_DEPTH, 32)."""
    flood = tmp_path / "flood.json"
    flood.write_text("[" * 100_000)
    deep = tmp_path / "deep.json"  # a valid report with an extra field 40 levels deep
    report = json.loads((VECTORS / FILES["anthropic"]).read_text())
    report["data"][0]["results"][0]["extra"] = json.loads("[" * 40 + "]" * 40)
    deep.write_text(json.dumps(report))
    outputs = []
    for path in (flood, deep):
        result = CliRunner().invoke(costs_app, ["--provider", "anthropic", "--invoice", str(path)])
        assert result.exit_code == 2, result.output
        outputs.append(result.output.strip())
    assert outputs[0].startswith("error: not JSON: ") and len(outputs[0].splitlines()) == 1
    assert outputs[1] == "error: nests arrays and objects more than 32 levels deep"
