"""Prometheus metrics (prometheus-client; text exposition format 0.0.4) for ``GET /metrics``.

Names follow the Prometheus naming conventions (https://prometheus.io/docs/practices/naming/):
the unit in the name (``_seconds``, ``_micro_usd``, ``_ratio``), ``_total`` on counters, base units
except money, which stays integer micro-USD as everywhere in opsgate. Labels never carry a user id.

Counted in this process, one call per governed request or provider attempt:

- ``opsgate_requests_total{operation,provider,model,status,code,variant}``: ``status`` is ``ok``,
  ``error`` (opsgate or a provider failed: a 5xx answer) or ``refused`` (the caller was turned
  down: a 4xx answer); ``code`` the stable error code (empty when ``ok``); ``provider``/``model``
  what served an ``ok`` call (empty otherwise); ``variant`` ``candidate`` for a call served by a
  variant rollout's candidate, else ``canary`` while the operation's toggle is rolled out to
  1-99 % of users, else ``stable`` (three values: the variants' names never become labels);
- ``opsgate_request_duration_seconds{operation,status,variant}``: end-to-end latency histogram,
  buckets :data:`LATENCY_BUCKETS_S` (10 ms to 60 s, LLM calls);
- ``opsgate_provider_requests_total{provider,model,outcome}`` and
  ``opsgate_provider_request_duration_seconds{provider,model}``: every provider attempt of the router
  (``outcome`` ``ok`` or the error kind, e.g. ``rate_limited``, ``circuit_open``);
- ``opsgate_token_counts_total{provider,model,outcome}``: token-count requests made because the
  prompt's byte bound did not fit a budget (``outcome`` ``counted`` or why the count failed,
  e.g. ``timeout``: the reservation then kept the byte bound);
- ``opsgate_cost_micro_usd_total{operation,provider,model}`` and
  ``opsgate_tokens_total{operation,provider,model,type}`` (``type`` input or output): every
  provider request a recorded call (successful, failed or shadow) paid for, under the provider
  and configured model it was sent to, as written to ``ai_operation_attempts`` (so a fallback's
  cut or timed-out requests count at their own provider, and a failed call's charges count).
  The counter per provider and model equals the sum of that table's ``cost_micro_usd``; the
  model label is the configured (requested) model, so the series stay bounded by the routes.

Read from the database at scrape time (the same for every replica; rules take ``max``):

- ``opsgate_provider_available{provider}`` (1/0) and
  ``opsgate_provider_unavailable_duration_seconds{provider}`` (0 when available), from
  :func:`~opsgate.monitoring.providers.outages` over every live instance;
- ``opsgate_ledger_hash_chain_intact`` (1/0, absent before the first ``opsgate ledger verify``) and
  ``opsgate_ledger_last_verification_timestamp_seconds``;
- ``opsgate_budget_enforcement_failures_total``: enforcement failures ever signalled;
- ``opsgate_budget_outcomes_total{scope,outcome}``: calls a budget had no room for, ``outcome``
  ``refused`` (402) or ``degraded`` (served by a cheaper target, ``--on-exhausted cheaper``), one
  per budget without room; ``scope`` is the budget's kind (``global``, ``user``, ``operation``,
  ``user_operation``, ``shadow``), never a user id or operation name, so the series stay 10;
- ``opsgate_cost_discrepancy_ratio{provider}``: the latest invoice reconciliation's
  Σ|difference| / Σ|invoiced| (0.01 = 1 %; never below 0);
- ``opsgate_incidents{state,severity}`` (open and acknowledged), ``opsgate_rollout_percentage
  {operation}`` (the toggle's share) and ``opsgate_rollout_candidate_percentage{operation}`` (a
  variant rollout's candidate's share, 0 without one), ``opsgate_budget_limit_micro_usd`` / ``opsgate_budget_spent_micro_usd`` /
  ``opsgate_budget_reserved_micro_usd{budget,period,operation}`` (``budget`` is the budget's id);
- ``opsgate_ledger_entries`` and this instance's ``opsgate_breaker_state{provider}`` (0 closed,
  1 half-open, 2 open: the provider's availability, :meth:`Router.snapshot`, as published to the
  database) and ``opsgate_model_breaker_state{provider,model}`` (each configured target's own
  breaker; the model label comes from the routes, never from a provider's answer).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import Connection, Engine, func, select

from opsgate.metering.attempts import AttemptCharge
from opsgate.metering.budgets import budget_statuses, outcome_counts
from opsgate.metering.counting import CountOutcome
from opsgate.monitoring.health import ENFORCEMENT_FAILURE, LEDGER_VERIFY, latest_discrepancies
from opsgate.monitoring.models import incidents, signals
from opsgate.monitoring.providers import outages
from opsgate.rollout.toggles import ToggleSnapshot
from opsgate.routing.router import Attempt, Router
from opsgate.store.models import ledger_entries

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
"""Histogram buckets (seconds) for LLM calls: 10 ms (a refusal) to 60 s (a long generation);
5 s is a bucket edge because the seed's P99 alert threshold is 5 s."""

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter("opsgate_requests", "Governed requests by outcome",
                   ["operation", "provider", "model", "status", "code", "variant"], registry=REGISTRY)
DURATION = Histogram("opsgate_request_duration_seconds", "End-to-end latency of governed requests",
                     ["operation", "status", "variant"], registry=REGISTRY, buckets=LATENCY_BUCKETS_S)
PROVIDER_REQUESTS = Counter("opsgate_provider_requests", "Provider attempts by outcome",
                            ["provider", "model", "outcome"], registry=REGISTRY)
PROVIDER_DURATION = Histogram("opsgate_provider_request_duration_seconds", "Latency of provider attempts",
                              ["provider", "model"], registry=REGISTRY, buckets=LATENCY_BUCKETS_S)
TOKEN_COUNTS = Counter("opsgate_token_counts", "Provider token counts for budget reservations",
                       ["provider", "model", "outcome"], registry=REGISTRY)
COST = Counter("opsgate_cost_micro_usd", "Metered cost (micro-USD)", ["operation", "provider", "model"],
               registry=REGISTRY)
TOKENS = Counter("opsgate_tokens", "Tokens billed", ["operation", "provider", "model", "type"], registry=REGISTRY)
M = TypeVar("M", Counter, Histogram)


class _Children(Generic[M]):
    """``metric.labels(*values)``, each label set's child looked up once and kept: the request
    path counts 5-7 series per call, and prometheus-client's ``labels`` checks and joins the
    values and takes the metric's lock on every call (about 2 us each; a dict lookup is 0.2 us).
    The children are the metric's own (``labels`` creates each once), so what is counted and
    scraped does not change. The label values are bounded (the module doc), so is the dict."""

    __slots__ = ("_metric", "_children")

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        """The child of ``values`` (label values in the metric's label order, strings)."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


_REQUESTS, _DURATION = _Children(REQUESTS), _Children(DURATION)
_PROVIDER_REQUESTS, _PROVIDER_DURATION = _Children(PROVIDER_REQUESTS), _Children(PROVIDER_DURATION)
_TOKEN_COUNTS, _COST, _TOKENS = _Children(TOKEN_COUNTS), _Children(COST), _Children(TOKENS)
BREAKER_VALUE = {"closed": 0, "half_open": 1, "open": 2}
SKIPPED = frozenset({"circuit_open", "not_configured", "deadline_exceeded", "context_window"})
"""Attempt kinds of targets the router skipped without calling the provider (no duration)."""


class ServedOutcome(Protocol):
    """What :func:`observe` reads of a successful call: :class:`opsgate.pipeline.Outcome` has
    these fields (the pipeline sits above monitoring, so it is described here, not imported).
    Latency in milliseconds."""

    operation: str
    provider: str
    model: str
    latency_ms: float


def observe(outcome: ServedOutcome, variant: str) -> None:
    """Count a successful call (provider, model, latency) under ``variant``; its cost and tokens
    are counted per request by :func:`observe_charges`."""
    op = outcome.operation
    _REQUESTS(op, outcome.provider, outcome.model, "ok", "", variant).inc()
    _DURATION(op, "ok", variant).observe(outcome.latency_ms / 1000)


def observe_charges(operation: str, charges: Iterable[AttemptCharge]) -> None:
    """Count the cost (micro-USD) and billed tokens of each request a recorded call of
    ``operation`` paid for, under that request's provider and configured model (the pipeline's
    charge observer: the rows it wrote to ``ai_operation_attempts``)."""
    for c in charges:
        _COST(operation, c.provider, c.model).inc(c.cost_micro_usd)
        usage = c.usage
        _TOKENS(operation, c.provider, c.model, "input").inc(
            usage.input_tokens + usage.cache_write_tokens + usage.cache_write_1h_tokens + usage.cache_read_tokens)
        _TOKENS(operation, c.provider, c.model, "output").inc(usage.output_tokens)


def observe_error(operation: str, code: str, http_status: int, latency_ms: float, variant: str) -> None:
    """Count a refused (4xx) or failed (5xx) request by its stable error ``code``."""
    status = "refused" if http_status < 500 else "error"
    _REQUESTS(operation, "", "", status, code, variant).inc()
    _DURATION(operation, status, variant).observe(latency_ms / 1000)


def observe_attempt(attempt: Attempt) -> None:
    """Count one router :class:`~opsgate.routing.router.Attempt` (skips count, without a duration)."""
    _PROVIDER_REQUESTS(attempt.provider, attempt.model, attempt.outcome_kind).inc()
    if attempt.outcome_kind not in SKIPPED:
        _PROVIDER_DURATION(attempt.provider, attempt.model).observe(attempt.latency_ms / 1000)


def observe_count(counted: CountOutcome) -> None:
    """Count one token-count request of the reservation step (``counted`` or its failure)."""
    _TOKEN_COUNTS(counted.provider, counted.model, counted.outcome).inc()


def exposition(router: Router, engine: Engine, now: datetime, toggles: ToggleSnapshot) -> bytes:
    """This process's registry plus the families read now from ``router`` (breakers), ``engine``
    (the database's figures at ``now``) and ``toggles`` (rollout percentages)."""
    with engine.connect() as conn:
        families = [*_provider_families(conn, now, router), *_ledger_families(conn),
                    *_alerting_families(conn)]
    families += _rollout_families(toggles) + _budget_families(engine, now)
    extra = CollectorRegistry()
    extra.register(_Fixed(families))
    return generate_latest(REGISTRY) + generate_latest(extra)


def _provider_families(conn: Connection, now: datetime, router: Router) -> list[Metric]:
    breaker = GaugeMetricFamily("opsgate_breaker_state", "0 closed, 1 half-open, 2 open (this instance)",
                                labels=["provider"])
    available = GaugeMetricFamily("opsgate_provider_available",
                                  "1 when no live instance reports the provider's circuit open or half-open",
                                  labels=["provider"])
    down_for = GaugeMetricFamily("opsgate_provider_unavailable_duration_seconds",
                                 "How long the provider has been unavailable (0 when available)",
                                 labels=["provider"])
    model_breaker = GaugeMetricFamily("opsgate_model_breaker_state",
                                      "0 closed, 1 half-open, 2 open (this instance, one configured model)",
                                      labels=["provider", "model"])
    out = outages(conn, now)
    snapshot = router.snapshot()
    names = {s.provider for s in snapshot} | set(out)
    for snap in snapshot:
        breaker.add_metric([snap.provider], BREAKER_VALUE[snap.state.value])
    for snap in router.model_snapshot():
        model_breaker.add_metric([snap.provider, snap.model or ""], BREAKER_VALUE[snap.state.value])
    for name in sorted(names):
        since = out.get(name)
        available.add_metric([name], 0 if since else 1)
        down_for.add_metric([name], (now - since).total_seconds() if since else 0)
    return [breaker, model_breaker, available, down_for]


def _ledger_families(conn: Connection) -> list[Metric]:
    size = conn.execute(select(func.count()).select_from(ledger_entries)).scalar() or 0
    found: list[Metric] = [GaugeMetricFamily("opsgate_ledger_entries", "Entries in the ledger", value=size)]
    latest = conn.execute(select(signals.c.ok, signals.c.at).where(signals.c.kind == LEDGER_VERIFY)
                          .order_by(signals.c.id.desc()).limit(1)).first()
    if latest is not None:
        found.append(GaugeMetricFamily("opsgate_ledger_hash_chain_intact",
                                       "1 when the latest ledger verification passed, 0 when it failed",
                                       value=1 if latest.ok else 0))
        found.append(GaugeMetricFamily("opsgate_ledger_last_verification_timestamp_seconds",
                                       "When the latest ledger verification ran (Unix time)",
                                       value=latest.at.timestamp()))
    return found


def _alerting_families(conn: Connection) -> list[Metric]:
    failures = conn.execute(select(func.count()).select_from(signals).where(
        signals.c.kind == ENFORCEMENT_FAILURE, signals.c.ok.is_(False))).scalar() or 0
    enforcement = CounterMetricFamily("opsgate_budget_enforcement_failures",
                                      "Budget enforcement failures signalled by metering", value=failures)
    discrepancy = GaugeMetricFamily("opsgate_cost_discrepancy_ratio",
                                    "Latest invoice reconciliation: sum |difference| / sum |invoiced|",
                                    labels=["provider"])
    for provider, pct in sorted(latest_discrepancies(conn).items()):
        discrepancy.add_metric([provider], float(pct / 100))
    open_incidents = GaugeMetricFamily("opsgate_incidents", "Incidents not yet resolved",
                                       labels=["state", "severity"])
    i = incidents.c
    for state, severity, count in conn.execute(
        select(i.state, i.severity, func.count()).where(i.state != "resolved")
        .group_by(i.state, i.severity).order_by(i.state, i.severity)
    ):
        open_incidents.add_metric([state, severity], count)
    outcomes = CounterMetricFamily("opsgate_budget_outcomes",
                                   "Calls a budget had no room for, by scope kind and outcome (refused or degraded)",
                                   labels=["scope", "outcome"])
    for (kind, outcome), n in sorted(outcome_counts(conn).items()):
        outcomes.add_metric([kind, outcome], n)
    return [enforcement, outcomes, discrepancy, open_incidents]


def _rollout_families(toggles: ToggleSnapshot) -> list[Metric]:
    gauge = GaugeMetricFamily("opsgate_rollout_percentage",
                              "Share of users the operation's toggle admits (0 when disabled or killed)",
                              labels=["operation"])
    candidate = GaugeMetricFamily("opsgate_rollout_candidate_percentage",
                                  "Share of users a variant rollout's candidate serves (0 without a candidate)",
                                  labels=["operation"])
    assignments = toggles.assignments()
    for op, toggle in sorted(toggles.toggles().items()):
        live = toggle.enabled and not toggle.kill_switch
        gauge.add_metric([op], toggle.rollout_percentage if live else 0)
        assignment = assignments.get(op)
        candidate.add_metric([op], assignment.candidate_percentage if assignment and assignment.candidate else 0)
    return [gauge, candidate]


def _budget_families(engine: Engine, now: datetime) -> list[Metric]:
    labels = ["budget", "period", "operation"]
    limit = GaugeMetricFamily("opsgate_budget_limit_micro_usd", "Budget limit per period", labels=labels)
    spent = GaugeMetricFamily("opsgate_budget_spent_micro_usd", "Spent in the current period", labels=labels)
    reserved = GaugeMetricFamily("opsgate_budget_reserved_micro_usd", "Reserved by calls in flight",
                                 labels=labels)
    for status in budget_statuses(engine, now):
        b = status.budget
        key = [str(b.id), b.period, b.operation]
        limit.add_metric(key, b.limit_micro_usd)
        spent.add_metric(key, status.spent_micro_usd)
        reserved.add_metric(key, status.reserved_micro_usd)
    return [limit, spent, reserved]


class _Fixed:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> list[Metric]:
        return self.families
