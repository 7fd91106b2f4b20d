"""The seed's success-criteria table with actual values: from a rehearsal report, or from the
latest health window of ``ai_operation_log`` (what a running deployment has measured).

Rows are ``{"criterion", "target", "actual", "status"}`` with ``status`` pass | fail | n/a; a
criterion the source cannot measure is ``n/a`` with the reason as its actual value.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from opsgate.config import Settings
from opsgate.monitoring.health import compute_health
from opsgate.rehearsal.report import (
    AVAILABILITY_TARGET,
    ERROR_RATE_TARGET,
    P99_TARGET_MS,
    criteria_rows,
)

NEEDS_REHEARSAL = "not available from a window: run `opsgate rehearse --report PATH`"


def criteria_from_rehearsal(report: dict[str, Any]) -> list[dict[str, str]]:
    """The seven rows of :func:`opsgate.rehearsal.report.criteria_rows` for a rehearsal report."""
    return [_row(name, target, actual, ok) for name, target, actual, ok in criteria_rows(report)]


def criteria_from_window(
    engine: Any, settings: Settings, now: datetime, chain_ok: bool | None
) -> list[dict[str, str]]:
    """The criteria over ``[now - health_window_s, now]`` (:func:`compute_health`); availability
    is the share of logged calls that did not fail; ``chain_ok`` is this audit's verification."""
    h = compute_health(engine, now, settings.health_window_s)
    window = f"last {settings.health_window_s} s, {h.operationCount} calls"
    rows = [_row("Test Pass Rate", "100 %", NEEDS_REHEARSAL, None)]
    if h.operationCount:
        rows += [
            _row(
                "Error Rate",
                "< 1 %",
                f"{h.errorRate:.2f} % ({window})",
                Decimal(str(h.errorRate)) < ERROR_RATE_TARGET,
            ),
            _row(
                "P99 Latency",
                "< 2 s",
                f"{h.p99Latency:.1f} ms ({window})",
                (h.p99Latency or 0) < P99_TARGET_MS,
            ),
        ]
    else:
        rows += [
            _row("Error Rate", "< 1 %", f"no calls ({window})", None),
            _row("P99 Latency", "< 2 s", f"no calls ({window})", None),
        ]
    rows.append(
        _row(
            "Cost Accuracy",
            "100 %",
            "no reconciliation run yet"
            if h.costAccuracy is None
            else f"{h.costAccuracy:.2f} % (latest reconciliation)",
            None if h.costAccuracy is None else h.costAccuracy >= 100,
        )
    )
    rows.append(_row("Security Issues", "0", NEEDS_REHEARSAL, None))
    rows.append(
        _row(
            "Hash Chain Integrity",
            "verified",
            {True: "verified", False: "BROKEN", None: "not checked"}[chain_ok],
            chain_ok,
        )
    )
    availability = Decimal(100) - Decimal(str(h.errorRate))
    rows.append(
        _row(
            "Availability",
            "≥ 99.9 %",
            f"{availability:.2f} % ({window})" if h.operationCount else f"no calls ({window})",
            availability >= AVAILABILITY_TARGET if h.operationCount else None,
        )
    )
    return rows


def _row(criterion: str, target: str, actual: str, ok: bool | None) -> dict[str, str]:
    return {
        "criterion": criterion,
        "target": target,
        "actual": actual,
        "status": "n/a" if ok is None else "pass" if ok else "fail",
    }
