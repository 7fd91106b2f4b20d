"""Canary and control cohorts from ``ai_operation_log`` (feeds :class:`~.controller.Evaluate`).

Canary: rows of the rollout's ``operations`` in the window whose ``(operation, user_id)`` passes
``in_canary`` (default: every row; while the toggle gates the operation, everyone who reached it was
in the canary). Control: every other row in the same window (the rest of the traffic through the same
providers), which is what tells a provider outage from a bad release. An error is a row whose
``status`` is not ``ok``. Shadow calls (``shadow``: a candidate's answer nobody received) are in
neither cohort. A variant rollout also leaves out degraded calls (``degraded``: a ``cheaper`` budget
sent them past their chain's first target, so neither variant's route served them); a toggle
rollout keeps them, since the operation did serve them. p99 is exact, by nearest rank over the
sorted latencies (sorted in Python).
"""

from __future__ import annotations

import math
from dataclasses import replace
from collections.abc import Callable, Iterable
from datetime import datetime

from sqlalchemy import ColumnElement, Engine, false, select, true

from opsgate.rollout.controller import CohortMetrics
from opsgate.store.models import ai_operation_log

REFUSED = "content_filtered"
"""The error code of a provider's content-policy refusal (a refusal / safety block)."""

CanaryRule = Callable[[str, str], bool]
"""``(operation, user_id) -> bool``: is this call part of the canary cohort?"""


def _served_by_route() -> ColumnElement[bool]:
    """Rows that count in a variant cohort: neither shadow nor degraded (``degraded`` is NULL on
    rows written before migration 0012)."""
    log = ai_operation_log.c
    return log.shadow.is_(false()) & log.degraded.is_not(true())


def metrics_from_log(
    engine: Engine,
    operations: Iterable[str],
    since: datetime,
    until: datetime,
    in_canary: CanaryRule | None = None,
) -> tuple[CohortMetrics, CohortMetrics]:
    """``(canary, control)`` over ``since <= created_at <= until`` (UTC)."""
    ops = frozenset(operations)
    log = ai_operation_log.c
    query = select(log.operation, log.user_id, log.status, log.latency_ms, log.cost_micro_usd).where(
        log.created_at >= since, log.created_at <= until, log.shadow.is_(false())
    )
    canary: list[tuple[bool, float, int]] = []
    control: list[tuple[bool, float, int]] = []
    with engine.connect() as conn:
        for operation, user_id, status, latency, cost in conn.execute(query):
            row = (status != "ok", latency, cost)
            in_cohort = operation in ops and (in_canary is None or in_canary(operation, user_id))
            (canary if in_cohort else control).append(row)
    return cohort(canary), cohort(control)


def metrics_by_variant(
    engine: Engine, operation: str, candidate: str, since: datetime, until: datetime
) -> tuple[CohortMetrics, CohortMetrics]:
    """``(canary, control)`` of a variant rollout over ``since <= created_at <= until`` (UTC):
    ``operation``'s calls served by ``candidate``, and its other calls (the live variant's, in
    the same window, through whatever route that variant takes), with the calls whose answer
    needed the repair request and those refused on content policy (``content_filtered``)."""
    log = ai_operation_log.c
    query = select(log.variant, log.status, log.error_code, log.latency_ms, log.cost_micro_usd,
                   log.repaired).where(log.operation == operation, log.created_at >= since, log.created_at <= until,
                         _served_by_route())
    canary: list[tuple[bool, float, int]] = []
    control: list[tuple[bool, float, int]] = []
    counts = {True: [0, 0], False: [0, 0]}  # in canary -> [repaired, refused]
    with engine.connect() as conn:
        for variant, status, code, latency, cost, repaired in conn.execute(query):
            is_canary = variant == candidate
            (canary if is_canary else control).append((status != "ok", latency, cost))
            counts[is_canary][0] += bool(repaired)
            counts[is_canary][1] += code == REFUSED
    return (replace(cohort(canary), repaired=counts[True][0], refused=counts[True][1]),
            replace(cohort(control), repaired=counts[False][0], refused=counts[False][1]))


def cohort(rows: list[tuple[bool, float, int]]) -> CohortMetrics:
    """:class:`CohortMetrics` of ``(is_error, latency_ms, cost_micro_usd)`` rows."""
    if not rows:
        return CohortMetrics()
    latencies = sorted(r[1] for r in rows)
    n = len(rows)
    return CohortMetrics(
        requests=n,
        errors=sum(1 for r in rows if r[0]),
        avg_latency_ms=math.fsum(latencies) / n,
        p99_latency_ms=latencies[math.ceil(0.99 * n) - 1],
        cost_per_request_micro_usd=sum(r[2] for r in rows) // n,
    )
