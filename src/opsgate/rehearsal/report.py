"""The rehearsal report: the seed's success-criteria table, the decision timeline, a JSON document.

JSON shape: ``{"rehearsal": {...}, "measured": {...}}``. ``rehearsal`` depends only on the seed and
the options (same seed, same document); ``measured`` holds what real time decides: the gateway's
own per-request latencies (``ai_operation_log.latency_ms``, real perf-counter time — the compressed
clock makes simulated durations meaningless for latency), the controller's latency numbers, the
client-side latencies and the wall-clock duration of the run.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

P99_TARGET_MS = 2000.0
AVAILABILITY_TARGET = Decimal("99.9")
ERROR_RATE_TARGET = Decimal(1)


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
                "test_pass_rate": {"passed": sum(c["ok"] for c in checks), "total": len(checks), "checks": checks},
                "error_rate_pct": _pct(log["errors"], log["requests"]),
                "cost_accuracy": _cost_accuracy(log),
                "security_issues": tally.leaks + facts["receiver_leaks"],
                "hash_chain_integrity": {"ok": facts["ledger"].ok, "entries": facts["ledger"].entries},
                "availability_pct": _pct(calls - server_errors, calls),
            },
            "calls": {"http_statuses": dict(sorted(tally.statuses.items())),
                      "problem_codes": dict(sorted(tally.codes.items())),
                      "served_by": dict(sorted(tally.providers.items())), "opt_in_writes": tally.opt_in_writes},
            "operation_log": {k: log[k] for k in ("requests", "errors", "by_provider", "error_codes", "cost_micro_usd")},
            "faults": facts["faults"],
            "rollout": {k: facts["rollout"][k] for k in ("id", "state", "stage_index", "percentage", "reason")},
            "timeline": facts["timeline"], "holds": facts["holds"],
            "alerts": {"rollout_events": facts["alerts"], "delivered": dict(sorted(facts["receiver"].items())),
                       "incidents": sorted(f"{i['severity']} {i['title']}" for i in facts["incidents"])},
        },
        "measured": {
            "p99_latency_ms": round(log["p99_latency_ms"], 3), "avg_latency_ms": round(log["avg_latency_ms"], 3),
            "client_p99_ms": round(_p99(tally.client_latency_ms), 3),
            "decision_latencies": facts["measured"], "wall_clock_s": round(wall_s, 2),
        },
    }


def _checks(facts: dict[str, Any]) -> list[dict[str, Any]]:
    scenario, rollout, log = facts["scenario"], facts["rollout"], facts["log"]
    rolled_back = rollout["state"] in ("rolling_back", "rolled_back", "escalated")
    fallback = any(p != "anthropic" for p in log["by_provider"])
    reached = 0 if rolled_back else rollout["percentage"]
    return [
        {"check": "rolled back" if scenario.expect_rollback else "no rollback",
         "ok": rolled_back == scenario.expect_rollback},
        {"check": f"ends at {scenario.expect_percentage} %", "ok": reached == scenario.expect_percentage},
        {"check": "fell back to another provider" if scenario.expect_fallback else "no fallback needed",
         "ok": fallback == scenario.expect_fallback},
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


def criteria_rows(report: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """``(criterion, target, actual, passed)`` for the seed's seven success criteria."""
    c, m = report["rehearsal"]["criteria"], report["measured"]
    tp, chain, cost = c["test_pass_rate"], c["hash_chain_integrity"], c["cost_accuracy"]
    return [
        ("Test Pass Rate", "100 %", f"{tp['passed']}/{tp['total']}", tp["passed"] == tp["total"]),
        ("Error Rate", "< 1 %", f"{c['error_rate_pct']} %", Decimal(c["error_rate_pct"]) < ERROR_RATE_TARGET),
        ("P99 Latency", "< 2 s", f"{m['p99_latency_ms']:.1f} ms (measured)", m["p99_latency_ms"] < P99_TARGET_MS),
        ("Cost Accuracy", "100 %", f"{cost['accuracy_pct']} %", cost["within_rounding"]),
        ("Security Issues", "0", str(c["security_issues"]), c["security_issues"] == 0),
        ("Hash Chain Integrity", "verified", f"{'verified' if chain['ok'] else 'BROKEN'} ({chain['entries']} entries)",
         chain["ok"]),
        ("Availability", "≥ 99.9 %", f"{c['availability_pct']} %", Decimal(c["availability_pct"]) >= AVAILABILITY_TARGET),
    ]


def render(report: dict[str, Any], console: Console) -> None:
    """Print the criteria table and the decision timeline."""
    r = report["rehearsal"]
    table = Table(title=f"opsgate rehearsal: {r['scenario']} (seed {r['seed']}, {r['hours']} h, {r['users']} users)")
    for name in ("Criterion", "Target", "Actual", "Status"):
        table.add_column(name)
    for name, target, actual, ok in criteria_rows(report):
        table.add_row(name, target, actual, "[green]PASS" if ok else "[red]FAIL")
    console.print(table)
    timeline = Table(title=f"Decision timeline ({r['holds']} holds not shown)")
    for name in ("Hour", "Action", "State", "Stage %", "Reason", "Canary req/err"):
        timeline.add_column(name)
    for d in r["timeline"]:
        n = d["numbers"]
        timeline.add_row(f"{d['hours']:.2f}", d["action"], d["state"], str(d["percentage"]), d["reason"],
                         f"{n.get('canary_requests', '-')}/{n.get('canary_errors', '-')}")
    console.print(timeline)
    console.print(f"faults: {r['faults'] or 'none'}; alerts delivered: {r['alerts']['delivered'] or 'none'}; "
                  f"final state: {r['rollout']['state']} at {r['rollout']['percentage']} %; "
                  f"wall clock {report['measured']['wall_clock_s']} s")


def write_json(report: dict[str, Any], path: Path) -> None:
    """Write the report as indented JSON (UTF-8)."""
    path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
