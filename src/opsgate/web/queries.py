"""Read-only queries the dashboard needs and no domain package offers yet (plain functions over an
engine, blocking; call them through ``asyncio.to_thread``).

- :func:`series`: error rate and latency percentiles per time bucket, computed with the same
  nearest-rank :func:`~opsgate.monitoring.health.percentile` and half-up
  :func:`~opsgate.monitoring.health.pct` as ``GET /v1/health``, so the window's totals equal it;
- :func:`costs`: metered spend (integer micro-USD) by UTC day and operation (calls), by provider
  and billed model (the requests each call paid for), and spend since a moment (today's spend for
  the overview);
- :func:`degraded_calls`: the calls a ``cheaper`` budget sent to a cheaper target;
- :func:`reconciliation_runs`: each provider's latest invoice reconciliation, row by row;
- :func:`ledger_status`: last verification, last checkpoint, anchors, unanchored entries and the
  newest entries' envelope (``seq``, ``ts``, ``kind``, ``actor``; never the payload).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Engine, false, func, select, true

from opsgate.ledger.models import ledger_anchor_records, ledger_anchor_state, ledger_checkpoints
from opsgate.ledger.service import log_size
from opsgate.metering.attempts import billed_model
from opsgate.metering.models import ai_operation_attempts, cost_reconciliations
from opsgate.monitoring.health import LEDGER_VERIFY, pct, percentile
from opsgate.monitoring.models import signals
from opsgate.routing.served import substituted
from opsgate.store.models import ai_operation_log, ledger_entries

RECENT_ENTRIES = 12


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _stats(rows: list[tuple[str, float]]) -> dict[str, Any]:
    latencies = sorted(latency for _, latency in rows)
    errors = sum(1 for status, _ in rows if status == "error")
    return {
        "count": len(rows),
        "errorRate": pct(errors, len(rows)),
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99),
    }


def series(engine: Engine, now: datetime, window_s: int, buckets: int, operation: str | None) -> dict[str, Any]:
    """Users' calls in ``[now - window_s, now]`` (both ends included, as ``GET /v1/health``; shadow
    calls, answered to nobody, are left out) split into ``buckets`` equal buckets.

    Returns ``{"window_s", "bucket_s", "operation", "t": [bucket start, epoch seconds],
    "count": [...], "errorRate": [% 2 decimals], "p50"|"p95"|"p99": [ms or None],
    "total": {"count", "errorRate", "p50", "p95", "p99"}}`` (latencies are end-to-end
    ``latency_ms``). ``ValueError`` unless ``window_s`` and ``buckets`` are positive.
    """
    if window_s <= 0 or buckets <= 0:
        raise ValueError("window_s and buckets must be positive")
    since = now - timedelta(seconds=window_s)
    log = ai_operation_log.c
    query = select(log.created_at, log.status, log.latency_ms).where(
        log.created_at >= since, log.created_at <= now, log.shadow.is_(false()))  # users' calls only
    if operation is not None:
        query = query.where(log.operation == operation)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    bucket_s = window_s / buckets
    split: list[list[tuple[str, float]]] = [[] for _ in range(buckets)]
    for at, status, latency in rows:
        index = int((at - since).total_seconds() // bucket_s)
        split[min(index, buckets - 1)].append((status, latency))
    stats = [_stats(b) for b in split]
    doc: dict[str, Any] = {
        "window_s": window_s, "bucket_s": bucket_s, "operation": operation,
        "t": [(since + timedelta(seconds=i * bucket_s)).timestamp() for i in range(buckets)],
    }
    for key in ("count", "errorRate", "p50", "p95", "p99"):
        doc[key] = [s[key] for s in stats]
    doc["total"] = _stats([(status, latency) for _, status, latency in rows])
    return doc


def spend_since(engine: Engine, since: datetime) -> int:
    """Metered cost (micro-USD) of every call logged at or after ``since``."""
    log = ai_operation_log.c
    with engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.sum(log.cost_micro_usd), 0))
                                .where(log.created_at >= since)).scalar() or 0)


def costs(engine: Engine, since: datetime) -> dict[str, Any]:
    """Spend of the calls logged at or after ``since``: ``{"total_micro_usd", "requests",
    "by_day": [{"key": "YYYY-MM-DD", "cost_micro_usd", "requests"}], "by_operation", "by_provider",
    "by_model"}``, each list ordered by key. ``by_day`` and ``by_operation`` count calls
    (``ai_operation_log``); ``by_provider`` and ``by_model`` count the provider requests the calls
    paid for (``ai_operation_attempts``), each under the provider that billed it and the model it
    was priced at (:func:`~opsgate.metering.attempts.billed_model`), as the invoices and
    ``opsgate costs reconcile`` do: a call that fell back shows each provider's share."""
    groups: dict[str, dict[str, list[int]]] = {k: defaultdict(lambda: [0, 0]) for k in
                                                ("by_day", "by_operation", "by_provider", "by_model")}
    log, a = ai_operation_log.c, ai_operation_attempts.c
    total = requests = 0
    with engine.connect() as conn:
        for at, operation, cost in conn.execute(
                select(log.created_at, log.operation, log.cost_micro_usd).where(log.created_at >= since)):
            _book(groups, {"by_day": at.date().isoformat(), "by_operation": operation}, cost)
            total += cost
            requests += 1
        for provider, model, served, cost in conn.execute(
                select(a.provider, a.model, a.served_model, a.cost_micro_usd).where(a.created_at >= since)):
            _book(groups, {"by_provider": provider, "by_model": billed_model(model, served)}, cost)
    doc: dict[str, Any] = {"total_micro_usd": total, "requests": requests}
    for group, found in groups.items():
        doc[group] = [{"key": k, "cost_micro_usd": v[0], "requests": v[1]} for k, v in sorted(found.items())]
    return doc


def _book(groups: dict[str, dict[str, list[int]]], keys: dict[str, str], cost: int) -> None:
    """Add one row of ``cost`` micro-USD to the group of each (group, key) of ``keys``."""
    for group, key in keys.items():
        groups[group][key][0] += cost
        groups[group][key][1] += 1


def degraded_calls(engine: Engine, since: datetime, limit: int) -> dict[str, Any]:
    """The calls logged at or after ``since`` that a ``cheaper`` budget sent past their chain's
    first target (``ai_operation_log.degraded``): ``{"count", "cost_micro_usd", "calls": [{"at",
    "request_id", "user_id", "operation", "provider", "model", "status", "cost_micro_usd"}]}``,
    the newest ``limit`` calls first."""
    log = ai_operation_log.c
    degraded = (log.created_at >= since) & log.degraded.is_(true())
    with engine.connect() as conn:
        count, cost = conn.execute(select(func.count(), func.coalesce(func.sum(log.cost_micro_usd), 0))
                                   .where(degraded)).one()
        rows = conn.execute(select(log.created_at, log.request_id, log.user_id, log.operation, log.provider,
                                   log.model, log.status, log.cost_micro_usd)
                            .where(degraded).order_by(log.created_at.desc(), log.id.desc()).limit(limit)).all()
    calls = [{"at": _iso(r.created_at), "request_id": r.request_id, "user_id": r.user_id,
              "operation": r.operation, "provider": r.provider, "model": r.model, "status": r.status,
              "cost_micro_usd": r.cost_micro_usd} for r in rows]
    return {"count": count, "cost_micro_usd": int(cost), "calls": calls}


def reconciliation_runs(engine: Engine) -> list[dict[str, Any]]:
    """Per provider, the rows of its latest reconciliation run: ``{"provider", "run_id",
    "invoice_name", "at", "rows": [{"day", "model", "tracked_micro_usd", "invoiced_micro_usd",
    "difference_micro_usd", "accuracy_pct"}]}``, by provider."""
    rec = cost_reconciliations.c
    latest = select(rec.provider, func.max(rec.created_at).label("at")).group_by(rec.provider).subquery()
    query = (select(cost_reconciliations)
             .join(latest, (latest.c.provider == rec.provider) & (latest.c.at == rec.created_at))
             .order_by(rec.provider, rec.day, rec.model))
    runs: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        for r in conn.execute(query).mappings():
            run = runs.setdefault(r["provider"], {"provider": r["provider"], "run_id": r["run_id"],
                                                  "invoice_name": r["invoice_name"], "at": _iso(r["created_at"]),
                                                  "rows": []})
            run["rows"].append({"day": r["day"].isoformat(), "model": r["model"],
                                "tracked_micro_usd": r["tracked_micro_usd"],
                                "invoiced_micro_usd": r["invoiced_micro_usd"],
                                "difference_micro_usd": r["difference_micro_usd"],
                                "accuracy_pct": r["accuracy_pct"]})
    return list(runs.values())


def ledger_status(engine: Engine) -> dict[str, Any]:
    """``{"entries", "last_verification": {"at", "ok", "detail"} | None, "last_checkpoint":
    {"size", "root", "at"} | None, "anchors": [{"anchor", "anchored_size", "reference", "at"}],
    "anchored_size", "unanchored", "recent": [{"seq", "ts", "kind", "actor"}]}``. ``root`` is hex;
    ``unanchored`` counts entries beyond the largest externally anchored checkpoint."""
    size = log_size(engine)
    with engine.connect() as conn:
        verified = conn.execute(select(signals.c.at, signals.c.ok, signals.c.detail)
                                .where(signals.c.kind == LEDGER_VERIFY)
                                .order_by(signals.c.id.desc()).limit(1)).first()
        checkpoint = conn.execute(select(ledger_checkpoints.c.size, ledger_checkpoints.c.root_hash,
                                         ledger_checkpoints.c.created_at)
                                  .order_by(ledger_checkpoints.c.size.desc()).limit(1)).first()
        anchors = [_anchor(conn, name, anchored) for name, anchored in
                   conn.execute(select(ledger_anchor_state).order_by(ledger_anchor_state.c.anchor))]
        bodies = conn.execute(select(ledger_entries.c.body).order_by(ledger_entries.c.seq.desc())
                              .limit(RECENT_ENTRIES)).scalars().all()
    anchored = max((a["anchored_size"] for a in anchors), default=0)
    return {
        "entries": size,
        "last_verification": None if verified is None else
        {"at": _iso(verified.at), "ok": verified.ok, "detail": verified.detail},
        "last_checkpoint": None if checkpoint is None else
        {"size": checkpoint.size, "root": bytes(checkpoint.root_hash).hex(), "at": _iso(checkpoint.created_at)},
        "anchors": anchors,
        "anchored_size": anchored,
        "unanchored": max(size - anchored, 0),
        "recent": [_envelope(bytes(body)) for body in bodies],
    }


def _anchor(conn: Any, name: str, anchored: int) -> dict[str, Any]:
    rec = ledger_anchor_records.c
    last = conn.execute(select(rec.reference, rec.created_at).where(rec.anchor == name)
                        .order_by(rec.size.desc()).limit(1)).first()
    return {"anchor": name, "anchored_size": int(anchored),
            "reference": last.reference if last else None, "at": _iso(last.created_at) if last else None}


def _envelope(body: bytes) -> dict[str, Any]:
    entry = orjson.loads(body)
    return {"seq": entry["seq"], "ts": entry["ts"], "kind": entry["kind"], "actor": entry.get("actor")}


def substitutions(engine: Engine, since: datetime) -> list[dict[str, Any]]:
    """Calls since ``since`` that a provider answered with another model than the one asked for
    (dated snapshots of the same model do not count): ``[{"operation", "provider", "model",
    "served_model", "calls", "last"}]``, most calls first (issue 13, ``model_substituted``)."""
    c = ai_operation_log.c
    query = (select(c.operation, c.provider, c.model, c.served_model, func.count(), func.max(c.created_at))
             .where(c.created_at >= since, c.served_model.is_not(None), c.served_model != c.model)
             .group_by(c.operation, c.provider, c.model, c.served_model))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    found = [{"operation": r[0], "provider": r[1], "model": r[2], "served_model": r[3], "calls": r[4],
              "last": r[5].isoformat()} for r in rows if substituted(r[2], r[3])]
    return sorted(found, key=lambda f: -f["calls"])
