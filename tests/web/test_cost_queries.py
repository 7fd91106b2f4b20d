"""The Costs page's figures (:func:`opsgate.web.queries.costs`): calls by day and operation, and
each provider's and model's share of what the calls paid for, as the invoices list it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.stores import migrated_engine

from opsgate.metering.attempts import ESTIMATED, REPORTED, AttemptCharge
from opsgate.metering.models import ai_operation_attempts
from opsgate.providers.base import Usage
from opsgate.store.models import ai_operation_log
from opsgate.web.queries import costs

AT = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
OPUS, FLASH = "claude-opus-5", "deepseek-flash"


def _call(request_id: str, provider: str | None, model: str | None, cost: int,
          charges: list[AttemptCharge]) -> list[tuple[object, list[dict]]]:
    log = {"request_id": request_id, "user_id": "alice", "operation": "email-compose", "provider": provider,
           "model": model, "status": "ok" if provider else "error", "latency_ms": 1.0, "cost_micro_usd": cost,
           "created_at": AT}
    return [(ai_operation_log, [log]), (ai_operation_attempts, [c.row(request_id, AT) for c in charges])]


def test_provider_and_model_spend_is_each_request_under_what_billed_it(tmp_path: Path) -> None:
    """Tester B F4/F5's calls: a fallback after three cut Claude answers (each charged its worst
    case), a call that failed after two Claude timeouts, a Claude call served by Sonnet, and a
    plain DeepSeek call. Before, the whole fallback call was DeepSeek's, the failed call nobody's,
    and the Sonnet call Opus's."""
    cut = [AttemptCharge(i, "anthropic", OPUS, None, "malformed_response", ESTIMATED, Usage(), 48_975)
           for i in range(3)]
    served = AttemptCharge(3, "deepseek", FLASH, "deepseek-flash", "ok", REPORTED, Usage(), 30)
    timeouts = [AttemptCharge(i, "anthropic", OPUS, None, "timeout", ESTIMATED, Usage(), 48_975)
                for i in range(2)]
    sonnet = AttemptCharge(0, "anthropic", OPUS, "claude-sonnet-4-5-20250929", "ok", REPORTED, Usage(), 4_500)
    plain = AttemptCharge(0, "deepseek", FLASH, "deepseek-flash", "ok", REPORTED, Usage(), 30)
    engine = migrated_engine(tmp_path)
    with engine.begin() as conn:
        for call in (_call("r1", "deepseek", FLASH, 146_955, [*cut, served]),
                     _call("r2", None, None, 97_950, timeouts),
                     _call("r3", "anthropic", OPUS, 4_500, [sonnet]),
                     _call("r4", "deepseek", FLASH, 30, [plain])):
            for table, rows in call:
                conn.execute(table.insert(), rows)
    doc = costs(engine, AT - timedelta(days=1))
    engine.dispose()

    assert (doc["total_micro_usd"], doc["requests"]) == (249_435, 4)
    assert doc["by_operation"] == [{"key": "email-compose", "cost_micro_usd": 249_435, "requests": 4}]
    assert doc["by_provider"] == [{"key": "anthropic", "cost_micro_usd": 5 * 48_975 + 4_500, "requests": 6},
                                  {"key": "deepseek", "cost_micro_usd": 60, "requests": 2}]
    assert doc["by_model"] == [{"key": OPUS, "cost_micro_usd": 5 * 48_975, "requests": 5},
                               {"key": "claude-sonnet-4-5", "cost_micro_usd": 4_500, "requests": 1},
                               {"key": FLASH, "cost_micro_usd": 60, "requests": 2}]
    assert sum(r["cost_micro_usd"] for r in doc["by_provider"]) == doc["total_micro_usd"]
