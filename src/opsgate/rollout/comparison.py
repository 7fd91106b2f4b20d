"""Canary against control for a variant rollout (the dashboard's Rollouts page and
``GET /v1/admin/rollouts``): every metric the controller judges between the two cohorts, their
values in the latest evaluation, the rule with its threshold (the ``canary_*`` settings, as
:class:`~opsgate.rollout.controller.Thresholds`) and whether the canary passes it.

The values are the numbers the controller recorded with its latest evaluation (the rollout's
history, stage window), judged by the same :class:`~opsgate.rollout.controller.CohortMetrics`
methods the controller uses. A relative rule is judged only when both cohorts have
``min_requests`` calls, the error-rate rule when the canary has; otherwise the verdict is
``too few calls``.
"""

from __future__ import annotations

from typing import Any

from opsgate.rollout.controller import CohortMetrics, Plan, Thresholds

PASS = "pass"
FAIL = "fail"
TOO_FEW = "too few calls"


def comparison(history: list[dict[str, Any]], limits: Thresholds, plan: Plan) -> dict[str, Any] | None:
    """``{"at", "stage_index", "stage" (``plan``'s :meth:`~Plan.stage_label` of it), "samples": {"canary", "control", "minimum"}, "metrics": [row]}`` from
    the latest decision in ``history`` (oldest first, :meth:`RolloutService.history` shape) that
    carries cohort numbers; None before the first evaluation. A row is ``{"metric", "label",
    "format" (ppm | ms | usd, see :mod:`opsgate.web.format`), "canary", "control", "rule",
    "verdict" (pass | fail | too few calls)}``; rates are in parts per million, p99 in ms, cost
    per call in micro-USD."""
    latest = next((h for h in reversed(history) if "canary_requests" in h["numbers"]), None)
    if latest is None:
        return None
    canary = CohortMetrics.from_numbers(latest["numbers"], "canary")
    control = CohortMetrics.from_numbers(latest["numbers"], "control")
    return {"at": latest["at"], "stage_index": latest["stage_index"],
            "stage": plan.stage_label(latest["stage_index"]),
            "samples": {"canary": canary.requests, "control": control.requests, "minimum": limits.min_requests},
            "metrics": _rows(canary, control, limits)}


def _rows(canary: CohortMetrics, control: CohortMetrics, limits: Thresholds) -> list[dict[str, Any]]:
    alone = canary.requests >= limits.min_requests
    both = alone and control.requests >= limits.min_requests
    repair_points, refusal_points = limits.max_repair_bp / 100, limits.max_refusal_bp / 100
    return [
        _row("error_rate", "Error rate", "ppm", canary.error_ppm(), control.error_ppm(),
             f"> {limits.rollback_error_bp / 100:g} % → rollback", alone,
             canary.error_bp_exceeds(limits.rollback_error_bp)),
        _row("repair_rate", "Schema-repair rate", "ppm", canary.rate_ppm(canary.repaired),
             control.rate_ppm(control.repaired), f"> control + {repair_points:g} points → hold", both,
             canary.rate_bp_above(canary.repaired, control, control.repaired, limits.max_repair_bp)),
        _row("refusal_rate", "Refusal rate", "ppm", canary.rate_ppm(canary.refused),
             control.rate_ppm(control.refused), f"> control + {refusal_points:g} points → hold", both,
             canary.rate_bp_above(canary.refused, control, control.refused, limits.max_refusal_bp)),
        _row("p99_latency", "p99 latency", "ms", canary.p99_latency_ms, control.p99_latency_ms,
             f"> {limits.max_p99_ratio:g}× control → rollback", both,
             canary.p99_above(control, limits.max_p99_ratio)),
        _row("cost_per_call", "Cost per call", "usd", canary.cost_per_request_micro_usd,
             control.cost_per_request_micro_usd, f"> {limits.max_cost_ratio:g}× control → rollback", both,
             canary.cost_above(control, limits.max_cost_ratio)),
    ]


def _row(metric: str, label: str, kind: str, canary: float, control: float, rule: str, judged: bool,
         broken: bool) -> dict[str, Any]:
    verdict = TOO_FEW if not judged else FAIL if broken else PASS
    return {"metric": metric, "label": label, "format": kind, "canary": canary, "control": control,
            "rule": rule, "verdict": verdict}
