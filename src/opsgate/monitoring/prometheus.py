"""Prometheus metrics (prometheus-client; text exposition format 0.0.4) for ``GET /metrics``.

Counted by the pipeline through :func:`observe` / :func:`observe_error` (one call per governed
request): ``opsgate_requests_total{operation,provider,status}``,
``opsgate_request_latency_seconds{operation}`` (histogram), ``opsgate_cost_micro_usd_total
{operation,provider}``, ``opsgate_budget_rejections_total{operation}``,
``opsgate_rate_limit_rejections_total{operation}``. Read at scrape time from the runtime:
``opsgate_breaker_state{provider}`` (0 closed, 1 half-open, 2 open) and ``opsgate_ledger_entries``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import Engine, func, select

from opsgate.routing.router import Router
from opsgate.store.models import ledger_entries

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter("opsgate_requests", "Governed requests", ["operation", "provider", "status"], registry=REGISTRY)
LATENCY = Histogram("opsgate_request_latency_seconds", "End-to-end latency", ["operation"], registry=REGISTRY,
                    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
COST = Counter("opsgate_cost_micro_usd", "Metered cost (micro-USD)", ["operation", "provider"], registry=REGISTRY)
BUDGET_REJECTIONS = Counter("opsgate_budget_rejections", "Refused: budget_exceeded", ["operation"], registry=REGISTRY)
RATE_LIMIT_REJECTIONS = Counter("opsgate_rate_limit_rejections", "Refused: rate_limited", ["operation"],
                                registry=REGISTRY)
BREAKER_VALUE = {"closed": 0, "half_open": 1, "open": 2}


def observe(outcome: Any) -> None:
    """Count a successful :class:`opsgate.pipeline.Outcome` (operation, provider, cost, latency)."""
    REQUESTS.labels(outcome.operation, outcome.provider, "ok").inc()
    LATENCY.labels(outcome.operation).observe(outcome.latency_ms / 1000)
    COST.labels(outcome.operation, outcome.provider).inc(outcome.cost_micro_usd)


def observe_error(operation: str, code: str, latency_ms: float) -> None:
    """Count a refused or failed request by its stable error ``code``."""
    REQUESTS.labels(operation, "", code).inc()
    LATENCY.labels(operation).observe(latency_ms / 1000)
    if code == "budget_exceeded":
        BUDGET_REJECTIONS.labels(operation).inc()
    elif code == "rate_limited":
        RATE_LIMIT_REJECTIONS.labels(operation).inc()


def exposition(router: Router, engine: Engine) -> bytes:
    """The registry plus ``router``'s breaker states and the ledger size in ``engine``, read now."""
    breaker = GaugeMetricFamily("opsgate_breaker_state", "0 closed, 1 half-open, 2 open", labels=["provider"])
    for snap in router.snapshot():
        breaker.add_metric([snap.provider], BREAKER_VALUE[snap.state.value])
    with engine.connect() as conn:
        size = conn.execute(select(func.count()).select_from(ledger_entries)).scalar() or 0
    ledger = GaugeMetricFamily("opsgate_ledger_entries", "Entries in the ledger", value=size)
    extra = CollectorRegistry()
    extra.register(_Fixed([breaker, ledger]))
    return generate_latest(REGISTRY) + generate_latest(extra)


class _Fixed:
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> list[GaugeMetricFamily]:
        return self.families
