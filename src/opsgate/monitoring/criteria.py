"""The seed's success-criteria table, row for row, each row with its evidence.

The seed ("Success Criteria for Production", docs/seed-phase8.md) has eight rows; Phase 1's
criteria add "Average latency < 2 seconds", shown after P99 Latency:

=====================  ==========  ==========================================================
criterion              target      evidence
=====================  ==========  ==========================================================
Test Pass Rate         100 %       ``artifacts/junit.xml`` of the last ``./dev test``, 490+ tests
Code Coverage          > 85 %      ``artifacts/coverage.xml`` (branch coverage of src/opsgate)
Error Rate             < 0.5 %     a rehearsal, or the latest health window of ai_operation_log
P99 Latency            < 2 s       the same calls
Average Latency        < 2 s       the same calls
Cost Accuracy          100 %       the latest invoice reconciliation (a rehearsal: re-pricing)
Security Issues        0           the security report of today (a rehearsal: its leak scan)
Hash Chain Integrity   100 %       a verification of the whole ledger
Availability           > 99.9 %    the same calls as the error rate: share not failed
=====================  ==========  ==========================================================

A row is ``{"criterion", "target", "actual", "status", "evidence"}``; ``status`` is ``pass``,
``fail`` or ``n/a`` — n/a means *no evidence*: ``actual`` then says what is missing and how to get
it, and the row never passes. Error rate < 0.5 % is the success bar; the rollout controller's
rollback (> 1 %) and the P1 alert (> 5 %) are separate thresholds owned by their domains.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from opsgate.metering.models import cost_reconciliations
from opsgate.monitoring.evidence import (
    COVERAGE,
    JUNIT,
    EvidenceError,
    read_coverage,
    read_test_run,
)
from opsgate.monitoring.health import compute_health, latest_discrepancies

PASS, FAIL, NONE = "pass", "fail", "n/a"
MIN_TESTS = 490
COVERAGE_TARGET = Decimal(85)
ERROR_RATE_TARGET = Decimal("0.5")
LATENCY_TARGET_MS = 2000.0
AVAILABILITY_TARGET = Decimal("99.9")
CRITERIA = (
    ("Test Pass Rate", "100 % (490+ tests)"),
    ("Code Coverage", "> 85 %"),
    ("Error Rate", "< 0.5 %"),
    ("P99 Latency", "< 2 s"),
    ("Average Latency", "< 2 s"),
    ("Cost Accuracy", "100 %"),
    ("Security Issues", "0"),
    ("Hash Chain Integrity", "100 %"),
    ("Availability", "> 99.9 %"),
)
"""The nine rows in the order shown: the seed's eight plus Phase 1's average latency."""
TARGETS = dict(CRITERIA)


@dataclass(frozen=True, slots=True)
class Row:
    """One criterion: the seed's ``target``, the ``actual`` value, ``status`` (pass | fail | n/a
    for no evidence) and the ``evidence`` it was read from (a file and its time, or a window)."""

    criterion: str
    actual: str
    status: str
    evidence: str

    @property
    def target(self) -> str:
        return TARGETS[self.criterion]

    def to_dict(self) -> dict[str, str]:
        """``{"criterion", "target", "actual", "status", "evidence"}``."""
        return {"criterion": self.criterion, "target": self.target, **{
            k: v for k, v in asdict(self).items() if k != "criterion"}}


def measured(criterion: str, actual: str, ok: bool, evidence: str) -> Row:
    """A row with evidence: ``pass`` when ``ok``."""
    return Row(criterion, actual, PASS if ok else FAIL, evidence)


def missing(criterion: str, how: str) -> Row:
    """A row without evidence: never passes; ``how`` says how to get it."""
    return Row(criterion, f"no evidence: {how}", NONE, "none")


def table(rows: list[Row]) -> list[dict[str, str]]:
    """The nine rows in :data:`CRITERIA` order as dicts; a criterion no source measured becomes a
    row without evidence. Raises ``ValueError`` on a row of another name."""
    by_name = {r.criterion: r for r in rows}
    unknown = set(by_name) - set(TARGETS)
    if unknown:
        raise ValueError(f"not a seed criterion: {sorted(unknown)}")
    return [
        by_name.get(name, missing(name, "no source measured it in this run")).to_dict()
        for name, _ in CRITERIA
    ]


# the last test run --------------------------------------------------------------------------
def test_rows(artifacts: Path) -> list[Row]:
    """Test Pass Rate and Code Coverage from ``artifacts/junit.xml`` and ``coverage.xml``."""
    return [_pass_rate(artifacts / JUNIT), _coverage(artifacts / COVERAGE)]


def _pass_rate(path: Path) -> Row:
    try:
        run = read_test_run(path)
    except EvidenceError as exc:
        return missing("Test Pass Rate", str(exc))
    pct = Decimal(run.passed * 100) / run.total if run.total else Decimal(0)
    not_passed = ", ".join(
        f"{n} {what}"
        for n, what in ((run.failures, "failed"), (run.errors, "errors"), (run.skipped, "skipped"))
        if n
    )
    actual = f"{run.passed}/{run.total} passed ({pct:.2f} %)" + (f"; {not_passed}" if not_passed else "")
    if run.total < MIN_TESTS:
        actual += f"; fewer than the seed's {MIN_TESTS}+ tests (a partial run?)"
    return measured(
        "Test Pass Rate",
        actual,
        run.total >= MIN_TESTS and run.passed == run.total,
        f"{path} ({_stamp(run.finished_at)})",
    )


def _coverage(path: Path) -> Row:
    try:
        cov = read_coverage(path)
    except EvidenceError as exc:
        return missing("Code Coverage", str(exc))
    return measured(
        "Code Coverage",
        f"{cov.percent:.2f} % ({cov.lines_covered}/{cov.lines_valid} lines, "
        f"{cov.branches_covered}/{cov.branches_valid} branches)",
        cov.percent > COVERAGE_TARGET,
        f"{path} ({_stamp(cov.written_at)})",
    )


# calls: a rehearsal or a health window ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Calls:
    """What a set of operation calls measured: ``errors`` of ``requests`` (``ai_operation_log``),
    ``available`` of ``answered`` (HTTP calls not answered 5xx; equal to the log's non-errors when
    only the log is known), latencies in ms, and the ``evidence`` naming the calls."""

    requests: int
    errors: int
    answered: int
    available: int
    p99_ms: float | None
    avg_ms: float | None
    evidence: str


def call_rows(calls: Calls) -> list[Row]:
    """Error Rate, P99 Latency, Average Latency and Availability over ``calls``."""
    if not calls.requests:
        how = f"no operation calls in {calls.evidence}: serve traffic or run `opsgate rehearse`"
        return [missing(n, how) for n in ("Error Rate", "P99 Latency", "Average Latency", "Availability")]
    error_pct = Decimal(calls.errors * 100) / calls.requests
    avail_pct = Decimal(calls.available * 100) / calls.answered if calls.answered else Decimal(0)
    ev = calls.evidence
    return [
        measured("Error Rate", f"{error_pct:.3f} % ({calls.errors}/{calls.requests})",
                 error_pct < ERROR_RATE_TARGET, ev),
        _latency("P99 Latency", calls.p99_ms, ev),
        _latency("Average Latency", calls.avg_ms, ev),
        measured("Availability", f"{avail_pct:.3f} % ({calls.available}/{calls.answered})",
                 avail_pct > AVAILABILITY_TARGET, ev),
    ]


def _latency(name: str, ms: float | None, evidence: str) -> Row:
    if ms is None:
        return missing(name, f"no latency recorded in {evidence}")
    return measured(name, f"{ms:.1f} ms", ms < LATENCY_TARGET_MS, evidence)


def window_calls(engine: Engine, now: datetime, window_s: int) -> Calls:
    """The calls of ``ai_operation_log`` in ``[now - window_s, now]`` (:func:`compute_health`)."""
    h = compute_health(engine, now, window_s)
    errors = round(h.errorRate * h.operationCount / 100)
    return Calls(
        h.operationCount, errors, h.operationCount, h.operationCount - errors, h.p99Latency,
        h.averageLatency, f"window {_stamp(now.timestamp() - window_s)} to {_stamp(now)}, "
        f"{h.operationCount} calls (ai_operation_log)",
    )


def rehearsal_calls(report: dict[str, Any], source: str) -> Calls:
    """The calls of a rehearsal report (:func:`opsgate.rehearsal.report.build_report`)."""
    r, m = report["rehearsal"], report["measured"]
    log, statuses = r["operation_log"], r["calls"]["http_statuses"]
    answered = sum(statuses.values())
    return Calls(
        log["requests"], log["errors"], answered,
        answered - sum(n for s, n in statuses.items() if s.startswith("5")),
        m["p99_latency_ms"] if log["requests"] else None,
        m["avg_latency_ms"] if log["requests"] else None,
        f"{source}: {r['scenario']} seed {r['seed']}, {r['hours']} h simulated, "
        f"{log['requests']} calls (ai_operation_log; latencies: the users' wall-clock round trips)",
    )


# cost, security, hash chain -----------------------------------------------------------------
def reconciliation_row(engine: Engine) -> Row:
    """Cost Accuracy: 100 - the largest provider discrepancy of the latest reconciliation run per
    provider (exact Decimal; passes only with no difference at all)."""
    with engine.connect() as conn:
        off = latest_discrepancies(conn)
        at = conn.execute(select(func.max(cost_reconciliations.c.created_at))).scalar()
    if not off:
        return missing("Cost Accuracy",
                       "no invoice reconciliation yet: `opsgate costs reconcile --provider P --invoice FILE`")
    worst = max(off.values())
    return measured(
        "Cost Accuracy",
        f"{max(Decimal(0), 100 - worst):.4f} % (largest discrepancy {worst:.4f} %)",
        worst == 0,
        f"latest reconciliation of {', '.join(sorted(off))} ({_stamp(at)}), cost_reconciliations",
    )


def security_issues(report: dict[str, Any]) -> list[str]:
    """The findings of a security report (:func:`opsgate.reports.security.build_security_report`)
    that need someone to act: weakening settings, refresh-token reuse detections, a ledger that
    does not verify now or failed a recorded verification, data keys due for rotation."""
    s = report["sections"]
    found = [f"weak setting {f['setting']}" for f in s["weak_config"]["findings"]]
    found += [f"refresh-token reuse ({r['reason']})" for r in s["refresh_reuse"].get("rows", [])
              for _ in range(r["count"])]
    ledger = s["ledger"]
    if not ledger["verification"]["ok"]:
        found.append("ledger does not verify")
    found += ["recorded ledger verification failed"] * ledger["recorded_verifications"]["failed"]
    if s["keys"].get("rotation_due"):
        found.append("data key rotation due")
    return found


def security_row(report: dict[str, Any]) -> Row:
    """Security Issues: the count of :func:`security_issues` in the report of one UTC day."""
    issues = security_issues(report)
    shown = "; ".join(issues[:5]) + (f"; and {len(issues) - 5} more" if len(issues) > 5 else "")
    return measured(
        "Security Issues",
        str(len(issues)) + (f" ({shown})" if issues else ""),
        not issues,
        f"security report {report['date']} (generated {report['generated_at']})",
    )


def chain_row(ok: bool | None, summary: str, evidence: str) -> Row:
    """Hash Chain Integrity from a verification (``ok`` None: not verified in this run)."""
    if ok is None:
        return Row("Hash Chain Integrity", "not checked", NONE,
                   "none: run `opsgate readiness` without --only, or `opsgate ledger verify`")
    return measured("Hash Chain Integrity", summary, ok, evidence)


def rehearsal_rows(report: dict[str, Any], source: str) -> list[Row]:
    """Every row a rehearsal measures: its calls, its cost re-pricing (sandboxes issue no
    invoices), its leak scan of responses and alert deliveries, its ledger verification."""
    c = report["rehearsal"]["criteria"]
    calls = rehearsal_calls(report, source)
    cost, chain = c["cost_accuracy"], c["hash_chain_integrity"]
    return [
        *call_rows(calls),
        measured(
            "Cost Accuracy",
            f"{cost['accuracy_pct']} % (metered {cost['recorded_micro_usd']} µUSD, "
            f"re-priced {cost['recomputed_micro_usd']} µUSD)",
            cost["within_rounding"],
            f"{calls.evidence}, re-priced at the price table (sandboxes issue no invoices)",
        ),
        measured(
            "Security Issues",
            str(c["security_issues"]),
            c["security_issues"] == 0,
            f"{calls.evidence}: every response and alert delivery scanned for keys",
        ),
        chain_row(
            chain["ok"],
            f"{'verified' if chain['ok'] else 'BROKEN'} ({chain['entries']} entries)",
            f"{source}: verify() over the whole rehearsal ledger",
        ),
    ]


def file_source(path: Path) -> str:
    """``path (modified <UTC time>)``: how a row names a file it read."""
    return f"{path} (modified {_stamp(path.stat().st_mtime)})"


def _stamp(moment: datetime | float | None) -> str:
    if moment is None:
        return "time unknown"
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

