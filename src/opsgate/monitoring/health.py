"""The seed's HealthMetrics, computed from ``ai_operation_log`` and the stored checks.

Over a window ending now (default 1 h, setting ``health_window_s``), for one operation or all:

- ``operationCount``: calls logged; ``errorRate``: % with status ``error`` (2 decimals);
- ``averageLatency``, ``p95Latency``, ``p99Latency``: end-to-end ``latency_ms``; percentiles are
  exact nearest-rank values over every row (the smallest value with at least p % of rows at or
  below it), not estimates;
- ``costAccuracy``: 100 − the largest provider discrepancy (Σ|difference| / Σ|invoiced| × 100 over
  that provider's latest reconciliation run, ``cost_reconciliations``), ``None`` before any run;
- ``budgetEnforcement``: False when a budget enforcement failure was signalled in the window;
- ``providerAvailability``: per provider, ``available`` (no serving instance reports its circuit
  open or half-open, see :func:`~opsgate.monitoring.providers.outages`), ``errorRate`` (% of its logged calls) and ``latency`` (mean
  provider latency, ms);
- ``hashChainIntegrity``: the latest ledger verification's result, ``None`` before the first;
- ``lastCheckTime``: when these numbers were computed (ISO 8601 UTC).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Connection, Engine, Row, false, func, select

from opsgate.metering.models import cost_reconciliations
from opsgate.monitoring.models import signals
from opsgate.monitoring.providers import outages
from opsgate.store.models import ai_operation_log

LEDGER_VERIFY = "ledger_verify"
ENFORCEMENT_FAILURE = "enforcement_failure"


class ProviderHealth(BaseModel):
    """One provider's availability: ``errorRate`` in %, ``latency`` mean ms (None without calls)."""

    available: bool
    errorRate: float
    latency: float | None


class HealthMetrics(BaseModel):
    """The seed's health document (field names exactly as the seed spells them)."""

    operationCount: int
    errorRate: float
    averageLatency: float | None
    p95Latency: float | None
    p99Latency: float | None
    costAccuracy: float | None
    budgetEnforcement: bool
    providerAvailability: dict[str, ProviderHealth]
    hashChainIntegrity: bool | None
    lastCheckTime: str


def percentile(sorted_values: list[float], pct: int) -> float | None:
    """Nearest-rank percentile of ascending ``sorted_values`` (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct * len(sorted_values) / 100))
    return sorted_values[rank - 1]


def pct(part: int, whole: int) -> float:
    """``part / whole`` in %, two decimals, half up; 0.0 when ``whole`` is 0."""
    if whole == 0:
        return 0.0
    value = Decimal(part * 100) / Decimal(whole)
    return float(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def compute_health(
    engine: Engine, now: datetime, window_s: int, operation: str | None = None
) -> HealthMetrics:
    """HealthMetrics for ``[now - window_s, now]``, for ``operation`` or every operation."""
    since = now - timedelta(seconds=window_s)
    log = ai_operation_log.c
    query = select(log.status, log.latency_ms, log.provider, log.provider_latency_ms).where(
        log.created_at >= since, log.created_at <= now, log.shadow.is_(false())  # users' calls only
    )
    if operation is not None:
        query = query.where(log.operation == operation)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        accuracy = _cost_accuracy(conn)
        integrity = _latest_ok(conn, LEDGER_VERIFY, None)
        enforcement_ok = _latest_ok(conn, ENFORCEMENT_FAILURE, since) is None
        unavailable = set(outages(conn, now))
    latencies = sorted(r.latency_ms for r in rows)
    errors = sum(1 for r in rows if r.status == "error")
    return HealthMetrics(
        operationCount=len(rows),
        errorRate=pct(errors, len(rows)),
        averageLatency=round(sum(latencies) / len(latencies), 3) if latencies else None,
        p95Latency=percentile(latencies, 95),
        p99Latency=percentile(latencies, 99),
        costAccuracy=accuracy,
        budgetEnforcement=enforcement_ok,
        providerAvailability=_providers(rows, unavailable),
        hashChainIntegrity=integrity,
        lastCheckTime=now.isoformat(),
    )


def _providers(rows: Sequence[Row[*tuple[Any, ...]]], unavailable: set[str]) -> dict[str, ProviderHealth]:
    calls: dict[str, list[Row[*tuple[Any, ...]]]] = defaultdict(list)
    for r in rows:
        if r.provider:
            calls[r.provider].append(r)
    result = {}
    for name in sorted(set(calls) | unavailable):
        mine = calls.get(name, [])
        lat = [r.provider_latency_ms for r in mine if r.provider_latency_ms is not None]
        result[name] = ProviderHealth(
            available=name not in unavailable,
            errorRate=pct(sum(1 for r in mine if r.status == "error"), len(mine)),
            latency=round(sum(lat) / len(lat), 3) if lat else None,
        )
    return result


def latest_discrepancies(conn: Connection) -> dict[str, Decimal]:
    """Per provider, Σ|difference| / Σ|invoiced| × 100 over its latest reconciliation run
    (100 when only tracked spend exists): never below 0, whatever the sign of an invoiced row
    (:mod:`opsgate.metering.reconcile`)."""
    rec = cost_reconciliations.c
    latest = (select(rec.provider, func.max(rec.created_at).label("at"))
              .group_by(rec.provider).subquery())
    rows = conn.execute(select(rec.provider, rec.run_id, rec.difference_micro_usd,
                               rec.invoiced_micro_usd, rec.created_at)
                        .join(latest, (latest.c.provider == rec.provider) & (latest.c.at == rec.created_at)))
    diff: dict[str, int] = defaultdict(int)
    invoiced: dict[str, int] = defaultdict(int)
    for provider, _run, difference, inv, _at in rows:
        diff[provider] += abs(difference)
        invoiced[provider] += abs(inv)
    return {p: (Decimal(diff[p] * 100) / invoiced[p]) if invoiced[p] else Decimal(100 if diff[p] else 0)
            for p in diff}


def _cost_accuracy(conn: Connection) -> float | None:
    off = latest_discrepancies(conn)
    if not off:
        return None
    worst = max(off.values())
    return float(max(Decimal(0), 100 - worst).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _latest_ok(conn: Connection, kind: str, since: datetime | None) -> bool | None:
    query = select(signals.c.ok).where(signals.c.kind == kind)
    if since is not None:
        query = query.where(signals.c.at >= since)
    return conn.execute(query.order_by(signals.c.id.desc()).limit(1)).scalar()

