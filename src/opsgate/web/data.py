"""The dashboard's figures as JSON documents, and the endpoints its pages poll (every few seconds,
so figures refresh without a reload).

Every figure comes from the same domain function the HTTP API uses, at the runtime clock's now:
``health`` is :func:`opsgate.monitoring.health.compute_health` (``GET /v1/health``), rollouts are
``RolloutService.to_json`` + ``history`` (``GET /v1/admin/rollouts``), toggles and adoption are
``toggle_json`` (``GET /v1/admin/toggles``), budgets are ``status_json`` (``GET /v1/admin/budgets``),
incidents are ``IncidentService.list`` / ``show`` (``GET /v1/incidents``). What no domain offers
yet comes from :mod:`opsgate.web.queries`.

Endpoints (a dashboard session of an operator or admin; 401 / 403 problems otherwise):
``GET /dashboard/data/{overview|providers|costs|adoption|rollouts|incidents|ledger|criteria}`` and
``GET /dashboard/data/series?window=<s>&operation=<id>``; ``window`` is in seconds (default: the
``health_window_s`` setting), 1 s to 31 days.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from opsgate.deps import RuntimeDep
from opsgate.errors import InvalidInput, NotFound
from opsgate.metering.budgets import budget_statuses, period_start
from opsgate.metering.views import status_json
from opsgate.monitoring import criteria as report_criteria
from opsgate.monitoring.evidence import artifacts_dir
from opsgate.monitoring.health import compute_health, latest_discrepancies
from opsgate.monitoring.incidents import ACKNOWLEDGED, OPEN
from opsgate.numbers import AsciiInt
from opsgate.operations import OPERATIONS
from opsgate.rollout.views import rollout_json, toggle_json
from opsgate.runtime import Runtime
from opsgate.web import queries
from opsgate.web.access import ViewerDep

router = APIRouter(prefix="/data")
"""Included by :data:`opsgate.web.views.router`, so its paths start with ``/dashboard/data``."""
MAX_WINDOW_S = 31 * 86400
SERIES_BUCKETS = 48
COST_DAYS = 14
DEGRADED_SHOWN = 20
Doc = dict[str, Any]


def window_of(runtime: Runtime, window: int | None) -> int:
    """``window`` seconds, or the ``health_window_s`` default; :class:`InvalidInput` out of range."""
    window_s = window or runtime.settings.health_window_s
    if not 0 < window_s <= MAX_WINDOW_S:
        raise InvalidInput(f"window must be between 1 and {MAX_WINDOW_S} seconds")
    return window_s


def operation_of(operation: str | None) -> str | None:
    """``operation`` when it names a known operation (empty: all); :class:`NotFound` otherwise."""
    if not operation:
        return None
    if operation not in OPERATIONS:
        raise NotFound(f"no operation {operation!r}")
    return operation


def per_minute(count: int, window_s: int) -> str:
    """``count`` calls over ``window_s`` seconds as calls per minute, 2 decimals (half up)."""
    rate = Decimal(count * 60) / Decimal(window_s)
    return str(rate.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def overview(runtime: Runtime, window_s: int) -> Doc:
    """``{"window_s", "health" (GET /v1/health), "ops_per_min", "p50", "spend_today_micro_usd",
    "budgets" (day and month, GET /v1/admin/budgets), "incidents": {"open", "acknowledged"},
    "rollout" (the newest, API shape, or None)}``."""
    now = runtime.clock.now()
    health = compute_health(runtime.engine, now, window_s).model_dump()
    totals = queries.series(runtime.engine, now, window_s, 1, None)["total"]
    incidents = runtime.incidents
    rollouts = runtime.rollout.list_rollouts()
    return {
        "window_s": window_s,
        "health": health,
        "ops_per_min": per_minute(health["operationCount"], window_s),
        "p50": totals["p50"],
        "spend_today_micro_usd": queries.spend_since(runtime.engine, period_start("day", now)),
        "budgets": [status_json(s) for s in budget_statuses(runtime.engine, now)],
        "incidents": {"open": len(incidents.list(OPEN, limit=1000)),
                      "acknowledged": len(incidents.list(ACKNOWLEDGED, limit=1000))},
        "rollout": rollouts[0].to_json() if rollouts else None,
    }


def series(runtime: Runtime, window_s: int, operation: str | None) -> Doc:
    """:func:`opsgate.web.queries.series` over ``window_s`` in :data:`SERIES_BUCKETS` buckets."""
    return queries.series(runtime.engine, runtime.clock.now(), window_s, SERIES_BUCKETS, operation)


def providers(runtime: Runtime, window_s: int) -> Doc:
    """``{"window_s", "providers": {name: {"available", "errorRate", "latency" (GET /v1/health
    providerAvailability), "breaker", "consecutive_failures" (this instance's circuit breaker,
    as ``opsgate_breaker_state`` in /metrics)}}, "substitutions": [...]}`` (served models that
    differ from the requested ones within the window, :func:`opsgate.web.queries.substitutions`)."""
    health = compute_health(runtime.engine, runtime.clock.now(), window_s).model_dump()
    breakers = {s.provider: s for s in runtime.gateway.router.snapshot()}
    found: Doc = {}
    for name in sorted(set(breakers) | set(health["providerAvailability"])):
        figures = health["providerAvailability"].get(name, {"available": True, "errorRate": 0.0, "latency": None})
        snap = breakers.get(name)
        found[name] = {**figures, "breaker": snap.state.value if snap else "-",
                       "consecutive_failures": snap.consecutive_failures if snap else 0}
    return {"window_s": window_s, "providers": found,
            "substitutions": queries.substitutions(runtime.engine, runtime.clock.now() - timedelta(seconds=window_s))}



def costs(runtime: Runtime) -> Doc:
    """The last :data:`COST_DAYS` UTC days of spend (:func:`opsgate.web.queries.costs`), the
    latest reconciliation per provider with its discrepancy (%, Decimal string),
    ``costAccuracy`` as ``GET /v1/health`` reports it, every budget as ``GET /v1/admin/budgets``
    (spent, reserved, left, refused and degraded today) and the window's ``degraded`` calls
    (:func:`opsgate.web.queries.degraded_calls`, the newest :data:`DEGRADED_SHOWN`)."""
    now = runtime.clock.now()
    since = period_start("day", now) - timedelta(days=COST_DAYS - 1)
    doc = queries.costs(runtime.engine, since)
    with runtime.engine.connect() as conn:
        off = latest_discrepancies(conn)
    runs = queries.reconciliation_runs(runtime.engine)
    for run in runs:
        run["discrepancy_pct"] = str(off[run["provider"]].quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP))
    health = compute_health(runtime.engine, now, runtime.settings.health_window_s)
    return {**doc, "days": COST_DAYS, "since": since.isoformat(), "reconciliations": runs,
            "costAccuracy": health.costAccuracy,
            "budgets": [status_json(s) for s in budget_statuses(runtime.engine, now)],
            "degraded": queries.degraded_calls(runtime.engine, since, DEGRADED_SHOWN)}


def adoption(runtime: Runtime) -> Doc:
    """``{"toggles": [toggle with "adoption": {"eligible", "opted_in", "rate_ppm"}]}`` exactly as
    ``GET /v1/admin/toggles``."""
    svc = runtime.rollout
    numbers = svc.adoption()
    return {"toggles": [toggle_json(t, numbers[t.operation]) for t in svc.list_toggles()]}


def rollouts(runtime: Runtime) -> Doc:
    """``{"rollouts": [...]}`` exactly as ``GET /v1/admin/rollouts`` (newest first, with history,
    shadow calls and a variant rollout's canary-against-control comparison)."""
    svc = runtime.rollout
    return {"rollouts": [rollout_json(svc, r) for r in svc.list_rollouts()]}


def incidents(runtime: Runtime) -> Doc:
    """``{"incidents": [...] (GET /v1/incidents), "open", "acknowledged", "resolved"}``."""
    found = runtime.incidents.list(limit=1000)
    counts = {state: sum(1 for i in found if i["state"] == state) for state in (OPEN, ACKNOWLEDGED, "resolved")}
    return {"incidents": found, **counts}


def criteria(runtime: Runtime) -> Doc:
    """``{"criteria": [the nine rows of opsgate.monitoring.criteria, with evidence]}``: the last
    test run's artifacts, the calls of the health window, the latest reconciliation and the
    worker's latest recorded ledger verification. Security Issues stays without evidence here:
    today's security report verifies the whole ledger, which `opsgate readiness` and `opsgate
    report security` do."""
    now, engine = runtime.clock.now(), runtime.engine
    integrity = compute_health(engine, now, runtime.settings.health_window_s).hashChainIntegrity
    chain = report_criteria.missing(
        "Hash Chain Integrity", "no ledger verification recorded: run `opsgate worker` or `opsgate ledger verify`",
    ) if integrity is None else report_criteria.measured(
        "Hash Chain Integrity", "verified" if integrity else "FAILED", integrity,
        "the worker's latest recorded ledger verification (signals)")
    security = report_criteria.missing(
        "Security Issues", "the dashboard does not build the security report: `opsgate readiness` "
        "or `opsgate report security`")
    calls = report_criteria.window_calls(engine, now, runtime.settings.health_window_s)
    return {"criteria": report_criteria.table([
        *report_criteria.test_rows(artifacts_dir()), *report_criteria.call_rows(calls),
        report_criteria.reconciliation_row(engine), security, chain])}


def ledger(runtime: Runtime) -> Doc:
    """:func:`opsgate.web.queries.ledger_status`."""
    return queries.ledger_status(runtime.engine)


PAGES: dict[str, Callable[[Runtime], Doc]] = {
    "costs": costs, "adoption": adoption, "rollouts": rollouts, "incidents": incidents, "ledger": ledger,
    "criteria": criteria,
}


def _json(doc: Doc) -> JSONResponse:
    return JSONResponse(doc, headers={"Cache-Control": "no-store"})


@router.get("/overview")
async def overview_data(_viewer: ViewerDep, runtime: RuntimeDep, window: AsciiInt | None = None) -> JSONResponse:
    return _json(await asyncio.to_thread(overview, runtime, window_of(runtime, window)))


@router.get("/series")
async def series_data(_viewer: ViewerDep, runtime: RuntimeDep, window: AsciiInt | None = None,
                      operation: str | None = None) -> JSONResponse:
    doc = await asyncio.to_thread(series, runtime, window_of(runtime, window), operation_of(operation))
    return _json(doc)


@router.get("/providers")
async def providers_data(_viewer: ViewerDep, runtime: RuntimeDep, window: AsciiInt | None = None) -> JSONResponse:
    return _json(await asyncio.to_thread(providers, runtime, window_of(runtime, window)))


@router.get("/{page}")
async def page_data(_viewer: ViewerDep, runtime: RuntimeDep, page: str) -> JSONResponse:
    if page not in PAGES:
        raise NotFound(f"no dashboard data {page!r}")
    return _json(await asyncio.to_thread(PAGES[page], runtime))
