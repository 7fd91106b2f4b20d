"""The seed's success-criteria table: nine rows, each from its evidence — a real pytest JUnit
report, a real coverage.py XML report, the operation log, reconciliations, the security report."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import coverage
import pytest
from sqlalchemy import insert
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.metering.models import cost_reconciliations
from opsgate.monitoring import criteria
from opsgate.monitoring.evidence import COVERAGE, JUNIT, read_coverage, read_test_run
from opsgate.store.db import make_engine, upgrade
from opsgate.store.models import ai_operation_log

NINE = [
    "Test Pass Rate", "Code Coverage", "Error Rate", "P99 Latency", "Average Latency",
    "Cost Accuracy", "Security Issues", "Hash Chain Integrity", "Availability",
]
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def junit_report(tmp: Path, passing: int, failing: int = 0) -> Path:
    """A JUnit XML report written by a real pytest run of ``passing`` + ``failing`` tests."""
    tests = tmp / "suite"
    tests.mkdir(exist_ok=True)
    bad = f"@pytest.mark.parametrize('n', range({failing}))\ndef test_bad(n):\n    assert n < 0\n"
    (tests / "test_generated.py").write_text(
        "import pytest\n\n"
        f"@pytest.mark.parametrize('n', range({passing}))\ndef test_ok(n):\n    assert n >= 0\n\n"
        + (bad if failing else ""),
        encoding="utf-8",
    )
    out = tmp / "artifacts" / JUNIT
    env = {k: v for k, v in os.environ.items() if not k.startswith("COV")}  # a plain run
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         f"--junit-xml={out}", str(tests)],
        cwd=tmp, env=env, capture_output=True, check=False, timeout=120,
    )
    return out


def coverage_report(tmp: Path, executed: list[int]) -> Path:
    """A coverage.py XML report (branch measurement on) of a five-statement module of which the
    lines ``executed`` ran."""
    module = tmp / "measured.py"
    module.write_text(
        "def used():\n    return 1\ndef unused():\n    return 2\nX = used()\n", encoding="utf-8"
    )
    cov = coverage.Coverage(data_file=None, branch=True, config_file=False)
    cov.get_data().add_arcs({str(module): _arcs(executed)})
    out = tmp / "artifacts" / COVERAGE
    out.parent.mkdir(exist_ok=True)
    cov.xml_report(morfs=[str(module)], outfile=str(out))
    return out


def _arcs(lines: list[int]) -> list[tuple[int, int]]:
    return [(-1, lines[0]), *itertools.pairwise(lines), (lines[-1], -1)]


def test_a_coverage_report_at_80_percent_fails_the_row(tmp_path: Path) -> None:
    path = coverage_report(tmp_path, [1, 2, 3, 5])  # `return 2` never ran: 4 of 5 statements
    assert read_coverage(path).percent == 80
    row = criteria.table(criteria.test_rows(path.parent))[1]
    assert row["criterion"] == "Code Coverage" and row["status"] == "fail"
    assert row["actual"].startswith("80.00 % (4/5 lines")
    assert row["evidence"].startswith(f"{path} (") and row["target"] == "> 85 %"
    path = coverage_report(tmp_path, [1, 2, 3, 4, 5])
    assert criteria.table(criteria.test_rows(path.parent))[1]["status"] == "pass"


def test_pass_rate_needs_every_test_passing_and_the_seeds_490(tmp_path: Path) -> None:
    path = junit_report(tmp_path, passing=492, failing=1)
    run = read_test_run(path)
    assert (run.total, run.passed, run.failures) == (493, 492, 1)
    assert datetime.now(UTC) - run.finished_at < timedelta(minutes=10)
    row = criteria.test_rows(path.parent)[0]
    assert row.status == "fail" and row.actual == "492/493 passed (99.80 %); 1 failed"
    path = junit_report(tmp_path, passing=489)
    row = criteria.test_rows(path.parent)[0]
    assert row.status == "fail" and "fewer than the seed's 490+" in row.actual
    path = junit_report(tmp_path, passing=490)
    assert criteria.test_rows(path.parent)[0].status == "pass"


def test_rows_without_evidence_say_how_to_get_it_and_never_pass(tmp_path: Path) -> None:
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / JUNIT).write_text("<html>not junit</html>", encoding="utf-8")
    rows = criteria.table(criteria.test_rows(tmp_path / "artifacts"))
    assert [r["criterion"] for r in rows] == NINE
    assert all(r["status"] == "n/a" for r in rows)
    assert "holds no <testsuite>" in rows[0]["actual"] and "./dev test" in rows[0]["actual"]
    assert rows[1]["actual"].startswith(f"no evidence: no {tmp_path / 'artifacts' / COVERAGE}")
    assert all(r["evidence"] == "none" for r in rows)


@pytest.fixture
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def _log(engine, statuses: list[str], latency_ms: float, batch: str) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        for i, status in enumerate(statuses):
            conn.execute(insert(ai_operation_log).values(
                request_id=f"{batch}{i}", user_id="u", operation="email-compose", status=status,
                provider="anthropic", model="claude", input_tokens=1, output_tokens=1,
                cost_micro_usd=1, latency_ms=latency_ms, created_at=NOW - timedelta(seconds=60),
            ))


def test_error_rate_succeeds_below_half_a_percent_only(engine) -> None:  # type: ignore[no-untyped-def]
    _log(engine, ["ok"] * 199 + ["error"], 120.0, "a")  # 0.5 %: not below the seed's bar
    rows = {r.criterion: r for r in criteria.call_rows(criteria.window_calls(engine, NOW, 3600))}
    assert rows["Error Rate"].status == "fail" and rows["Error Rate"].actual == "0.500 % (1/200)"
    assert rows["Average Latency"].actual == "120.0 ms" and rows["Average Latency"].status == "pass"
    assert rows["Availability"].actual == "99.500 % (199/200)" and rows["Availability"].status == "fail"
    assert rows["Error Rate"].evidence == (
        "window 2026-12-01T11:00:00Z to 2026-12-01T12:00:00Z, 200 calls (ai_operation_log)")
    _log(engine, ["ok"] * 200, 120.0, "b")  # 1 of 400: 0.25 %
    rows = {r.criterion: r for r in criteria.call_rows(criteria.window_calls(engine, NOW, 3600))}
    assert rows["Error Rate"].status == "pass"


def test_cost_accuracy_comes_from_the_latest_reconciliation(engine) -> None:  # type: ignore[no-untyped-def]
    assert criteria.reconciliation_row(engine).status == "n/a"
    with engine.begin() as conn:
        for run, at, diff in (("old", NOW - timedelta(days=2), 500), ("new", NOW, 0)):
            conn.execute(insert(cost_reconciliations).values(
                run_id=run, provider="anthropic", invoice_name="inv.json", day=NOW.date(), model="m",
                tracked_micro_usd=10_000, invoiced_micro_usd=10_000 + diff, difference_micro_usd=diff,
                accuracy_pct="100", created_at=at))
    row = criteria.reconciliation_row(engine)
    assert row.status == "pass" and row.actual.startswith("100.0000 %")
    assert "anthropic (2026-12-01T12:00:00Z)" in row.evidence


def test_readiness_json_has_the_nine_rows_with_their_evidence(tmp_path: Path) -> None:
    junit_report(tmp_path, passing=495)
    coverage_report(tmp_path, [1, 2, 3, 5])
    (tmp_path / "docs" / "runbooks").mkdir(parents=True)
    env = {"OPSGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}",
           "OPSGATE_JWT_SECRET": "j" * 48, "OPSGATE_MASTER_KEY": "A" * 43 + "="}
    result = CliRunner().invoke(app, ["readiness", "--json", "--root", str(tmp_path)], env=env)
    doc = json.loads(result.stdout)
    rows = {r["criterion"]: r for r in doc["criteria"]}
    assert list(rows) == NINE
    assert rows["Test Pass Rate"]["status"] == "pass"
    assert rows["Test Pass Rate"]["actual"] == "495/495 passed (100.00 %)"
    assert rows["Test Pass Rate"]["evidence"].startswith(str(tmp_path / "artifacts" / JUNIT))
    assert rows["Code Coverage"]["status"] == "fail" and rows["Code Coverage"]["actual"].startswith("80.00 %")
    assert rows["Error Rate"]["status"] == "n/a" and "no operation calls" in rows["Error Rate"]["actual"]
    assert rows["Cost Accuracy"]["status"] == "n/a" and "opsgate costs reconcile" in rows["Cost Accuracy"]["actual"]
    assert rows["Security Issues"]["evidence"].startswith("security report ")
    assert rows["Hash Chain Integrity"]["status"] == "pass"
    assert all(set(r) == {"criterion", "target", "actual", "status", "evidence"} for r in rows.values())
    assert result.exit_code == 1  # blocking audit items fail on this bare database
