"""Cost reconciliation: tracked cost (``ai_operation_log``) against a provider's export, per UTC
day and model.

For each (day, model) in either source: ``tracked`` (sum of ``cost_micro_usd`` of that provider's
calls that day), ``invoiced`` (sum of the export's lines, rounded once, half up, to micro-USD),
``difference = invoiced - tracked`` and ``accuracy = 100 - |difference| / invoiced × 100`` (two
decimals, half up, at least 0; 100.00 when both are 0, 0.00 when only the invoice is 0). A row whose
``|difference|`` is above :data:`THRESHOLD_PCT` of ``invoiced`` (or any tracked spend against a
zero invoice) is a discrepancy. Every row is stored in ``cost_reconciliations`` under one run id.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import Engine, select

from opsgate.clock import Clock
from opsgate.metering.invoices import InvoiceLine
from opsgate.metering.models import cost_reconciliations
from opsgate.store.models import ai_operation_log

THRESHOLD_PCT = Decimal(1)
"""The seed's alert threshold: a discrepancy above 1 % of the invoiced cost."""


@dataclass(frozen=True, slots=True)
class ReconciledRow:
    """One (day, model): costs in integer micro-USD, ``accuracy_pct`` a 2-decimal string."""

    day: date
    model: str
    tracked_micro_usd: int
    invoiced_micro_usd: int
    difference_micro_usd: int
    accuracy_pct: str
    discrepant: bool


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """A stored run: its id and rows sorted by day and model."""

    run_id: str
    rows: tuple[ReconciledRow, ...]

    @property
    def discrepant(self) -> bool:
        """True when any row is a discrepancy (the CLI exits 1)."""
        return any(r.discrepant for r in self.rows)


def reconcile(
    engine: Engine, clock: Clock, provider: str, invoice_name: str, lines: Sequence[InvoiceLine]
) -> Reconciliation:
    """Compare ``lines`` with ``provider``'s tracked calls on the same UTC days; store and return."""
    invoiced: dict[tuple[date, str], Decimal] = defaultdict(Decimal)
    for line in lines:
        invoiced[(line.day, line.model)] += line.cost_micro_usd
    days = {day for day, _ in invoiced}
    tracked = _tracked(engine, provider, days)
    rows = tuple(
        _row(day, model, tracked.get((day, model), 0), invoiced.get((day, model), Decimal(0)))
        for day, model in sorted(set(invoiced) | set(tracked))
    )
    run = Reconciliation(uuid.uuid4().hex, rows)
    _store(engine, clock, provider, invoice_name, run)
    return run


def _tracked(engine: Engine, provider: str, days: set[date]) -> dict[tuple[date, str], int]:
    if not days:
        return {}
    start = datetime.combine(min(days), time(), UTC)
    end = datetime.combine(max(days) + timedelta(days=1), time(), UTC)
    log = ai_operation_log.c
    query = select(log.created_at, log.model, log.cost_micro_usd).where(
        log.provider == provider, log.created_at >= start, log.created_at < end
    )
    totals: dict[tuple[date, str], int] = defaultdict(int)
    with engine.connect() as conn:
        for created_at, model, cost in conn.execute(query):
            day = created_at.date()
            if day in days and model:
                totals[(day, model)] += cost
    return totals


def _row(day: date, model: str, tracked: int, invoiced_exact: Decimal) -> ReconciledRow:
    invoiced = int(invoiced_exact.to_integral_value(rounding=ROUND_HALF_UP))
    difference = invoiced - tracked
    if invoiced == 0:
        accuracy = Decimal(100) if tracked == 0 else Decimal(0)
    else:
        accuracy = max(Decimal(0), 100 - Decimal(abs(difference)) * 100 / invoiced)
    accuracy = accuracy.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    discrepant = abs(difference) * 100 > THRESHOLD_PCT * invoiced if invoiced else tracked > 0
    return ReconciledRow(day, model, tracked, invoiced, difference, f"{accuracy:.2f}", discrepant)


def _store(engine: Engine, clock: Clock, provider: str, invoice_name: str, run: Reconciliation) -> None:
    now = clock.now()
    if not run.rows:
        return
    with engine.begin() as conn:
        conn.execute(cost_reconciliations.insert(), [
            {"run_id": run.run_id, "provider": provider, "invoice_name": invoice_name[:255],
             "day": r.day, "model": r.model, "tracked_micro_usd": r.tracked_micro_usd,
             "invoiced_micro_usd": r.invoiced_micro_usd,
             "difference_micro_usd": r.difference_micro_usd, "accuracy_pct": r.accuracy_pct,
             "created_at": now}
            for r in run.rows
        ])
