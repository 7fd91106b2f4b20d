"""Alert rules with the seed's defaults, and its severity table.

Severities (the seed): **P1** error rate > 5 %, cost discrepancies, security breach (respond
< 5 min); **P2** error rate 1–5 %, provider failures, latency > 5 s (< 15 min); **P3** error rate
< 1 %, minor features broken (< 1 h). Rules (each threshold a setting):

==================== ====================================================== ========= =====
rule                 fires when                                             severity  pages
==================== ====================================================== ========= =====
``error_rate``       an operation's error rate > 1 % (> 5 %: P1)            P2 / P1   yes
``p99_latency``      an operation's p99 latency > 5,000 ms                  P2        no
``cost_discrepancy`` the provider's latest reconciliation is off by > 1 %   P2        yes
``ledger_integrity`` the latest ledger verification failed                  P1        yes *
``provider_outage``  a provider unavailable > 30 min (then: demoted)        P2        yes
==================== ====================================================== ========= =====

(*) escalates immediately to the top level. Rate and latency rules need ``alert_min_requests``
calls in the window; with fewer, the rule says nothing (the alert keeps its state). The seed puts
"cost discrepancies" in P1 but its rule asks for an *investigation* at P2; the rule wins here and
``cost_discrepancy_severity`` can raise it. Every threshold is exclusive: exactly at it, no alert.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import Connection, false, select

from opsgate.config import Settings
from opsgate.monitoring.health import LEDGER_VERIFY, latest_discrepancies, percentile
from opsgate.monitoring.models import signals
from opsgate.monitoring.providers import outages, recovered
from opsgate.store.models import ai_operation_log


class Severity(StrEnum):
    """The seed's severities, most urgent first."""

    P1 = "P1"
    P2 = "P2"
    P3 = "P3"


RESPONSE_TIME_S = {Severity.P1: 5 * 60, Severity.P2: 15 * 60, Severity.P3: 60 * 60}
"""The seed's response time per severity (seconds): an unacknowledged incident escalates then."""

ERROR_RATE, P99_LATENCY, COST, LEDGER, OUTAGE = (
    "error_rate", "p99_latency", "cost_discrepancy", "ledger_integrity", "provider_outage",
)


def classify_error_rate(pct: Decimal, p1_pct: Decimal = Decimal(5), p2_pct: Decimal = Decimal(1)) -> Severity:
    """The seed's table for an error rate in %: above ``p1_pct`` P1, above ``p2_pct`` P2, else P3."""
    if pct > p1_pct:
        return Severity.P1
    return Severity.P2 if pct > p2_pct else Severity.P3


SEVERITY_TABLE: dict[str, Severity] = {
    "cost_discrepancy": Severity.P1,
    "security_breach": Severity.P1,
    "provider_failure": Severity.P2,
    "latency_over_5s": Severity.P2,
    "minor_feature_broken": Severity.P3,
}
"""The seed's non-rate rows of the table (the error-rate rows are :func:`classify_error_rate`)."""


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """Thresholds: percentages as Decimal, latency in ms, durations in seconds."""

    min_requests: int = 20
    window_s: int = 3600
    error_rate_p2_pct: Decimal = Decimal(1)
    error_rate_p1_pct: Decimal = Decimal(5)
    p99_latency_ms: int = 5000
    cost_discrepancy_pct: Decimal = Decimal(1)
    cost_discrepancy_severity: Severity = Severity.P2
    provider_unavailable_s: int = 1800

    @classmethod
    def from_settings(cls, s: Settings) -> RuleConfig:
        """The thresholds named ``alert_*`` / ``health_window_s`` in :class:`Settings`."""
        return cls(s.alert_min_requests, s.health_window_s, s.alert_error_rate_p2_pct,
                   s.alert_error_rate_p1_pct, s.alert_p99_latency_ms, s.alert_cost_discrepancy_pct,
                   Severity.P2, s.alert_provider_unavailable_s)


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule's verdict on one alert group.

    ``firing``: True / False, or None when there is too little data to say (state unchanged).
    ``labels`` identify the group; :attr:`dedup_key` is derived from the rule and labels.
    ``immediate`` asks for the top escalation level at once.
    """

    rule: str
    labels: dict[str, str]
    firing: bool | None
    severity: Severity | None = None
    value: str = ""
    title: str = ""
    summary: str = ""
    pages: bool = True
    immediate: bool = False
    details: dict[str, str] = field(default_factory=dict)

    @property
    def dedup_key(self) -> str:
        """``rule:k=v,k=v`` (labels sorted), or ``rule:sha256`` when that exceeds 255 characters
        (PagerDuty's dedup_key limit)."""
        key = self.rule + ":" + ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        if len(key) <= 255:
            return key
        return f"{self.rule}:{hashlib.sha256(key.encode()).hexdigest()}"


def evaluate(conn: Connection, now: datetime, cfg: RuleConfig, firing_outages: set[str]) -> list[Finding]:
    """Every rule's findings at ``now``; ``firing_outages``: providers whose outage alert fires."""
    return [
        *_operation_findings(conn, now, cfg),
        *_cost_findings(conn, cfg),
        *_ledger_findings(conn),
        *_outage_findings(conn, now, cfg, firing_outages),
    ]


def _operation_findings(conn: Connection, now: datetime, cfg: RuleConfig) -> list[Finding]:
    log = ai_operation_log.c
    rows = conn.execute(select(log.operation, log.status, log.latency_ms).where(
        log.created_at > now - timedelta(seconds=cfg.window_s), log.created_at <= now,
        log.shadow.is_(false())))  # a shadow call's errors and latency are no user's
    by_op: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for op, status, latency in rows:
        by_op[op].append((status, latency))
    found = []
    for op, calls in sorted(by_op.items()):
        found += [_error_rate(op, calls, cfg), _latency(op, calls, cfg)]
    return found


def _error_rate(op: str, calls: list[tuple[str, float]], cfg: RuleConfig) -> Finding:
    labels = {"operation": op}
    if len(calls) < cfg.min_requests:
        return Finding(ERROR_RATE, labels, None)
    errors = sum(1 for status, _ in calls if status == "error")
    rate = Decimal(errors * 100) / len(calls)
    shown = f"{rate.quantize(Decimal('0.01'))}%"
    if rate <= cfg.error_rate_p2_pct:
        return Finding(ERROR_RATE, labels, False, value=shown)
    severity = classify_error_rate(rate, cfg.error_rate_p1_pct, cfg.error_rate_p2_pct)
    return Finding(ERROR_RATE, labels, True, severity, shown,
                   f"{op}: error rate {shown}",
                   f"{errors} of {len(calls)} {op} calls failed in the last {cfg.window_s // 60} min "
                   f"(threshold {cfg.error_rate_p2_pct}%, P1 above {cfg.error_rate_p1_pct}%).",
                   details={"errors": str(errors), "calls": str(len(calls))})


def _latency(op: str, calls: list[tuple[str, float]], cfg: RuleConfig) -> Finding:
    labels = {"operation": op}
    if len(calls) < cfg.min_requests:
        return Finding(P99_LATENCY, labels, None)
    p99 = percentile(sorted(lat for _, lat in calls), 99) or 0.0
    shown = f"{p99:.0f} ms"
    if p99 <= cfg.p99_latency_ms:
        return Finding(P99_LATENCY, labels, False, value=shown)
    return Finding(P99_LATENCY, labels, True, Severity.P2, shown, f"{op}: p99 latency {shown}",
                   f"p99 latency of {op} over {len(calls)} calls is {shown} "
                   f"(threshold {cfg.p99_latency_ms} ms).", pages=False)


def _cost_findings(conn: Connection, cfg: RuleConfig) -> list[Finding]:
    found = []
    for provider, off in sorted(latest_discrepancies(conn).items()):
        shown = f"{off.quantize(Decimal('0.01'))}%"
        firing = off > cfg.cost_discrepancy_pct
        found.append(Finding(
            COST, {"provider": provider}, firing, cfg.cost_discrepancy_severity if firing else None,
            shown, f"{provider}: cost discrepancy {shown}",
            f"The latest {provider} invoice reconciliation differs from tracked cost by {shown} "
            f"(threshold {cfg.cost_discrepancy_pct}%). Investigate the price table and usage.",
        ))
    return found


def _ledger_findings(conn: Connection) -> list[Finding]:
    row = conn.execute(select(signals.c.ok, signals.c.detail).where(signals.c.kind == LEDGER_VERIFY)
                       .order_by(signals.c.id.desc()).limit(1)).first()
    if row is None:
        return []
    if row.ok:
        return [Finding(LEDGER, {}, False, value="ok")]
    return [ledger_failure(row.detail)]


def ledger_failure(detail: str) -> Finding:
    """The ``ledger_integrity`` rule's firing finding for a failed verification (``detail``: what
    failed): P1, at the top escalation level at once."""
    return Finding(LEDGER, {}, True, Severity.P1, "failed", "Ledger verification failed",
                   f"The hash-chained ledger did not verify: {detail}", immediate=True)


def _outage_findings(conn: Connection, now: datetime, cfg: RuleConfig, firing: set[str]) -> list[Finding]:
    out = outages(conn, now)
    found = []
    for provider in sorted(set(out) | firing):
        labels = {"provider": provider}
        if provider in firing:
            if recovered(conn, now, provider):
                found.append(Finding(OUTAGE, labels, False, value="recovered"))
            continue
        minutes = int((now - out[provider]).total_seconds() // 60)
        if (now - out[provider]).total_seconds() <= cfg.provider_unavailable_s:
            found.append(Finding(OUTAGE, labels, False, value=f"{minutes} min"))
            continue
        found.append(Finding(
            OUTAGE, labels, True, SEVERITY_TABLE["provider_failure"], f"{minutes} min",
            f"{provider} unavailable for {minutes} min: fallback activated",
            f"{provider} has been unavailable since {out[provider].isoformat()}; it is demoted "
            "behind every other provider until it recovers.",
        ))
    return found
