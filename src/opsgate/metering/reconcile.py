"""Cost reconciliation: tracked cost (``ai_operation_attempts``, one row per provider request a
call may have been billed for) against a provider's export, per UTC day and model.

The model is the one that served and was priced, as the invoice lists it: a request's
``served_model``, else its requested ``model`` when the provider reported none
(:func:`~opsgate.metering.attempts.billed_model`); a dated snapshot on either side counts as its
model (``claude-sonnet-4-5-20250929`` is ``claude-sonnet-4-5``).

For each (day, model) in either source: ``tracked`` (the ``cost_micro_usd`` of that provider's
requests that day: reported usage exactly, plus the part of the ``estimated`` requests' worst
cases the invoice shows was billed, i.e. ``invoiced - reported`` clamped to ``[0, estimated]``:
the usage of a timed-out or cut request is unknown, its worst case is only a bound, and the
invoice is what reveals it; such a request can therefore hide a discrepancy no larger than its
bound), ``invoiced`` (sum of the export's lines, rounded once, half up, to micro-USD),
``difference = invoiced - tracked`` and ``accuracy = 100 - |difference| / |invoiced| × 100`` (two
decimals, half up, from 0 to 100; 100.00 when both are 0, 0.00 when only the invoice is 0). A row whose
``|difference|`` is above :data:`THRESHOLD_PCT` of ``|invoiced|`` (or any tracked spend against a
zero invoice) is a discrepancy. ``invoiced`` is below 0 only when an export's credit or adjustment
lines (Cloud Billing's ``cost_type`` ``adjustment``, ``rounding_error``) outweigh its costs that
day; against it, tracked spend (never below 0) is off by more than the invoice's size, so such a
row is always a discrepancy, never an accuracy above 100 %. Every row is stored in
``cost_reconciliations`` under one run id.
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
from opsgate.metering.attempts import ESTIMATED, billed_model
from opsgate.metering.invoices import InvoiceLine
from opsgate.metering.models import ai_operation_attempts, cost_reconciliations
from opsgate.providers.base import normalise_model
from opsgate.store.db import begin_write

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
        invoiced[(line.day, normalise_model(line.model))] += line.cost_micro_usd
    days = {day for day, _ in invoiced}
    reported, estimated = _tracked(engine, provider, days)
    rows = tuple(
        _row(day, model, reported.get((day, model), 0), estimated.get((day, model), 0),
             invoiced.get((day, model), Decimal(0)))
        for day, model in sorted(set(invoiced) | set(reported) | set(estimated))
    )
    run = Reconciliation(uuid.uuid4().hex, rows)
    _store(engine, clock, provider, invoice_name, run)
    return run


Totals = dict[tuple[date, str], int]


def _tracked(engine: Engine, provider: str, days: set[date]) -> tuple[Totals, Totals]:
    """(reported, estimated) micro-USD per (day, billed model) of ``provider``'s requests on
    ``days``."""
    reported: Totals = defaultdict(int)
    estimated: Totals = defaultdict(int)
    if not days:
        return reported, estimated
    start = datetime.combine(min(days), time(), UTC)
    end = datetime.combine(max(days) + timedelta(days=1), time(), UTC)
    a = ai_operation_attempts.c
    query = select(a.created_at, a.model, a.served_model, a.billing, a.cost_micro_usd).where(
        a.provider == provider, a.created_at >= start, a.created_at < end
    )
    with engine.connect() as conn:
        for created_at, model, served_model, billing, cost in conn.execute(query):
            day = created_at.date()
            if day in days:
                key = (day, billed_model(model, served_model))
                (estimated if billing == ESTIMATED else reported)[key] += cost
    return reported, estimated


def _row(day: date, model: str, reported: int, estimated: int, invoiced_exact: Decimal) -> ReconciledRow:
    invoiced = int(invoiced_exact.to_integral_value(rounding=ROUND_HALF_UP))
    tracked = reported + min(max(invoiced - reported, 0), estimated)
    difference = invoiced - tracked
    scale = abs(invoiced)  # a credit can leave a day's invoice below 0: the ratio stays a magnitude
    if scale == 0:
        accuracy = Decimal(100) if tracked == 0 else Decimal(0)
    else:
        accuracy = max(Decimal(0), 100 - Decimal(abs(difference)) * 100 / scale)
    accuracy = accuracy.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    discrepant = abs(difference) * 100 > THRESHOLD_PCT * scale if scale else tracked > 0
    return ReconciledRow(day, model, tracked, invoiced, difference, f"{accuracy:.2f}", discrepant)


def _store(engine: Engine, clock: Clock, provider: str, invoice_name: str, run: Reconciliation) -> None:
    now = clock.now()
    if not run.rows:
        return
    with begin_write(engine) as conn:
        conn.execute(cost_reconciliations.insert(), [
            {"run_id": run.run_id, "provider": provider, "invoice_name": invoice_name[:255],
             "day": r.day, "model": r.model, "tracked_micro_usd": r.tracked_micro_usd,
             "invoiced_micro_usd": r.invoiced_micro_usd,
             "difference_micro_usd": r.difference_micro_usd, "accuracy_pct": r.accuracy_pct,
             "created_at": now}
            for r in run.rows
        ])
