"""The rehearsal report: the scenario's checks, the seed's success-criteria table (rows of
:mod:`opsgate.reports.criteria`; Test Pass Rate and Code Coverage from the last test run's
artifacts), the decision timeline, a JSON document.

JSON shape: ``{"rehearsal": {...}, "measured": {...}}``. ``rehearsal`` depends only on the seed and
the options (same seed, same document), the latencies the gateway recorded included: they are on the
rehearsal's clock (``ai_operation_log.latency_ms``: the sandboxes' seeded simulated provider latency,
:mod:`opsgate.sandbox.latency`), and so are the controller's latency numbers in the timeline.
``measured`` holds what real time decides: the synthetic users' wall-clock latencies over HTTP
(the gateway's real processing time, the sandboxes answering at once) and the run's duration.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from opsgate.monitoring.criteria import PASS, rehearsal_rows, table, test_rows


def build_report(facts: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """The report document from the driver's facts (see the module docstring)."""
    log, tally, config, scenario = facts["log"], facts["tally"], facts["config"], facts["scenario"]
    checks = _checks(facts)
    calls = sum(tally.statuses.values())
    server_errors = sum(n for s, n in tally.statuses.items() if s.startswith("5"))
    return {
        "rehearsal": {
            "scenario": scenario.name, "summary": scenario.summary, "seed": config.seed,
            "hours": config.hours, "users": config.users,
            "sampling": {
                "calls_per_minute_at_100_pct": config.calls_per_minute,
                "note": "sampled calls per simulated minute, scaled by the rollout percentage; "
                        "each evaluation window has at least 2 offered calls plus 1 stale-client call",
                "population": facts["population"],
            },
            "criteria": {
                "scenario_checks": {"passed": sum(c["ok"] for c in checks), "total": len(checks), "checks": checks},
                "error_rate_pct": _pct(log["errors"], log["requests"]),
                "cost_accuracy": _cost_accuracy(log),
                "security_issues": tally.leaks + facts["receiver_leaks"],
                "hash_chain_integrity": {"ok": facts["ledger"].ok, "entries": facts["ledger"].entries},
                "availability_pct": _pct(calls - server_errors, calls),
            },
            "calls": {"http_statuses": dict(sorted(tally.statuses.items())),
                      "problem_codes": dict(sorted(tally.codes.items())),
                      "served_by": dict(sorted(tally.providers.items())), "opt_in_writes": tally.opt_in_writes},
            "operation_log": {k: log[k] for k in ("requests", "errors", "by_provider", "error_codes", "cost_micro_usd")}
            | {"simulated_p99_latency_ms": round(log["p99_latency_ms"], 3),
               "simulated_avg_latency_ms": round(log["avg_latency_ms"], 3)},
            "faults": facts["faults"],
            "rollout": {k: facts["rollout"][k] for k in ("id", "variant", "state", "stage_index", "percentage",
                                                           "reason")},
            "live_variant": facts["live_variant"],
            "timeline": facts["timeline"], "holds": facts["holds"],
            "alerts": {"rollout_events": facts["alerts"], "delivered": dict(sorted(facts["receiver"].items())),
                       "incidents": sorted(f"{i['severity']} {i['title']}" for i in facts["incidents"])},
        },
        "measured": {
            "p99_latency_ms": round(_p99(tally.client_latency_ms), 3),
            "avg_latency_ms": round(_mean(tally.client_latency_ms), 3), "wall_clock_s": round(wall_s, 2),
        },
    }


def _checks(facts: dict[str, Any]) -> list[dict[str, Any]]:
    scenario, rollout, log = facts["scenario"], facts["rollout"], facts["log"]
    rolled_back = rollout["state"] in ("rolling_back", "rolled_back", "escalated")
    fallback = any(p != "anthropic" for p in log["by_provider"])
    reached = 0 if rolled_back else rollout["percentage"]
    routing = {"check": "fell back to another provider" if scenario.expect_fallback else "no fallback needed",
               "ok": fallback == scenario.expect_fallback}
    if scenario.candidate is not None:  # the candidate's own route is not a fallback
        routing = {"check": f"live variant at the end: {scenario.expect_live}",
                   "ok": facts["live_variant"] == scenario.expect_live}
    return [
        {"check": "rolled back" if scenario.expect_rollback else "no rollback",
         "ok": rolled_back == scenario.expect_rollback},
        {"check": f"ends at {scenario.expect_percentage} %", "ok": reached == scenario.expect_percentage},
        routing,
        {"check": "rollback alert delivered" if scenario.expect_rollback else "no rollout alert",
         "ok": bool(facts["alerts"]) == scenario.expect_rollback
         and (not scenario.expect_rollback or sum(facts["receiver"].values()) > 0)},
        {"check": "ledger verifies", "ok": facts["ledger"].ok},
    ]


def _pct(part: int, whole: int) -> str:
    return str((Decimal(part) * 100 / whole).quantize(Decimal("0.001"))) if whole else "0.000"


def _cost_accuracy(log: dict[str, Any]) -> dict[str, Any]:
    recorded, exact = Decimal(log["cost_micro_usd"]), log["recomputed_cost_micro_usd"]
    accuracy = Decimal(100) - abs(recorded - exact) * 100 / exact if exact else Decimal(100)
    return {"recorded_micro_usd": int(recorded), "recomputed_micro_usd": str(exact.quantize(Decimal("0.000001"))),
            "accuracy_pct": str(accuracy.quantize(Decimal("0.0001"))),
            "within_rounding": abs(recorded - exact) < max(1, log["requests"])}


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(0.99 * len(ordered)) - 1] if ordered else 0.0


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def scenario_passed(report: dict[str, Any]) -> bool:
    """True when every check of the scenario held (the command's exit status)."""
    checks = report["rehearsal"]["criteria"]["scenario_checks"]
    return bool(checks["passed"] == checks["total"])


def criteria(report: dict[str, Any], artifacts: Path, source: str = "this rehearsal") -> list[dict[str, str]]:
    """The nine success criteria: this rehearsal's measurements, and the last test run's
    reports in ``artifacts`` (:func:`opsgate.reports.criteria.test_rows`)."""
    return table([*test_rows(artifacts), *rehearsal_rows(report, source)])


def render(report: dict[str, Any], console: Console, artifacts: Path) -> None:
    """Print the scenario's checks, the success criteria and the decision timeline."""
    r = report["rehearsal"]
    checks = Table(title=f"opsgate rehearsal: {r['scenario']} (seed {r['seed']}, {r['hours']} h, {r['users']} users)")
    for name in ("Scenario check", "Status"):
        checks.add_column(name)
    for c in r["criteria"]["scenario_checks"]["checks"]:
        checks.add_row(c["check"], "[green]PASS" if c["ok"] else "[red]FAIL")
    console.print(checks)
    console.print(criteria_table(criteria(report, artifacts)))
    timeline = Table(title=f"Decision timeline ({r['holds']} holds not shown)")
    for name in ("Hour", "Action", "Variant", "State", "Stage %", "Reason", "Canary req/err"):
        timeline.add_column(name)
    for d in r["timeline"]:
        n = d["numbers"]
        timeline.add_row(f"{d['hours']:.2f}", d["action"], d["variant"] or "-", d["state"], str(d["percentage"]),
                         d["reason"], f"{n.get('canary_requests', '-')}/{n.get('canary_errors', '-')}")
    console.print(timeline)
    console.print(f"faults: {r['faults'] or 'none'}; alerts delivered: {r['alerts']['delivered'] or 'none'}; "
                  f"final state: {r['rollout']['state']} at {r['rollout']['percentage']} %"
                  f"{'; live variant: ' + r['live_variant'] if r['live_variant'] else ''}; "
                  f"wall clock {report['measured']['wall_clock_s']} s")


def criteria_table(rows: list[dict[str, str]], title: str = "Success criteria (the seed's)") -> Table:
    """The criteria rows as a Rich table with their evidence."""
    shown = Table(title=title)
    for name in ("Criterion", "Target", "Actual", "Status", "Evidence"):
        shown.add_column(name, overflow="fold")
    colour = {PASS: "green", "fail": "red"}
    for row in rows:
        mark = colour.get(row["status"], "yellow")
        status = "NO EVIDENCE" if row["status"] == "n/a" else row["status"].upper()
        shown.add_row(row["criterion"], row["target"], escape(row["actual"]), f"[{mark}]{status}",
                      escape(row["evidence"]))
    return shown

def write_json(report: dict[str, Any], path: Path) -> None:
    """Write the report as indented JSON (UTF-8)."""
    path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
