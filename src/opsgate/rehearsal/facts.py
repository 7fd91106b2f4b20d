"""What the gateway itself recorded in ``ai_operation_log`` during a rehearsal: counts, errors,
exact p99 of the gateway's measured latency, metered cost and its independent recomputation."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, select

from opsgate.config import Settings
from opsgate.metering.cost import exact_cost_micro_usd
from opsgate.metering.prices import PriceBook, PriceTable
from opsgate.providers.base import Usage
from opsgate.store.models import ai_operation_log


def log_facts(engine: Engine, settings: Settings) -> dict[str, Any]:
    """``{requests, errors, by_provider, error_codes, p99_latency_ms, avg_latency_ms,
    cost_micro_usd, recomputed_cost_micro_usd (Decimal)}`` over every row. The recomputation prices
    each row's tokens at the served model's price at the row's time (the maintained prices under
    opsgate's packaged table, plus the run's ``[prices]``, e.g. a variant scenario's candidate) with
    exact Decimal arithmetic (cache writes at the 5-minute rate, as the log stores them together)."""
    prices = PriceBook.from_settings(settings, table=PriceTable.load())
    c = ai_operation_log.c
    query = select(c.status, c.error_code, c.provider, c.model, c.served_model, c.created_at, c.latency_ms,
                   c.cost_micro_usd, c.input_tokens, c.output_tokens, c.cache_write_tokens,
                   c.cache_read_tokens, c.reasoning_tokens)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    latencies = sorted(r.latency_ms for r in rows)
    by_provider: dict[str, int] = {}
    codes: dict[str, int] = {}
    recomputed = Decimal(0)
    for r in rows:
        if r.status == "ok":
            by_provider[r.provider] = by_provider.get(r.provider, 0) + 1
        else:
            codes[r.error_code] = codes.get(r.error_code, 0) + 1
        if r.model is not None:
            usage = Usage(input_tokens=r.input_tokens, output_tokens=r.output_tokens,
                          cache_write_tokens=r.cache_write_tokens, cache_read_tokens=r.cache_read_tokens,
                          reasoning_tokens=r.reasoning_tokens)
            price = prices.price_at(r.provider, r.served_model or r.model, r.created_at).price
            recomputed += exact_cost_micro_usd(usage, price)
    n = len(rows)
    return {
        "requests": n, "errors": n - sum(by_provider.values()),
        "by_provider": dict(sorted(by_provider.items())), "error_codes": dict(sorted(codes.items())),
        "p99_latency_ms": latencies[math.ceil(0.99 * n) - 1] if n else 0.0,
        "avg_latency_ms": math.fsum(latencies) / n if n else 0.0,
        "cost_micro_usd": sum(r.cost_micro_usd for r in rows), "recomputed_cost_micro_usd": recomputed,
    }
