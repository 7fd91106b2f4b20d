"""The budgets admin API (admin role only; errors are RFC 9457 problems via OpsgateError).

``GET /v1/admin/budgets`` ->
``{"budgets": [{"id", "user_id", "operation", "period", "scope", "limit_micro_usd",
"period_start", "spent_micro_usd", "reserved_micro_usd"}]}`` for the current UTC periods.

``PUT /v1/admin/budgets`` with ``{"user_id": "*", "operation": "*", "period": "day"|"month",
"limit_usd": "0.010"}`` (``*`` = any; ``limit_usd`` a decimal string, whole micro-USD) creates or
changes one budget and answers it in the same shape.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from opsgate.metering.budgets import BudgetStatus, budget_statuses, set_budget, usd_to_micro
from opsgate.metering.models import ANY
from opsgate.security.auth import bearer_token
from opsgate.security.rbac import require_role

router = APIRouter(prefix="/v1/admin/budgets", tags=["budgets"])


class BudgetIn(BaseModel):
    """One budget to set. ``limit_usd`` is a decimal string (e.g. ``"25.00"``)."""

    user_id: str = Field(default=ANY, min_length=1, max_length=128)
    operation: str = Field(default=ANY, min_length=1, max_length=64)
    period: str = Field(pattern="^(day|month)$")
    limit_usd: str = Field(max_length=32)


def _admin_runtime(request: Request):  # type: ignore[no-untyped-def]
    runtime = request.app.state.runtime
    principal = runtime.tokens.verify(bearer_token(request.headers.get("authorization")))
    require_role(principal, "admin")
    return runtime


def status_json(status: BudgetStatus) -> dict[str, Any]:
    """The API/CLI shape of one budget and its current counters."""
    b = status.budget
    return {
        "id": b.id, "user_id": b.user_id, "operation": b.operation, "period": b.period,
        "scope": b.scope, "limit_micro_usd": b.limit_micro_usd,
        "period_start": status.period_start.isoformat(),
        "spent_micro_usd": status.spent_micro_usd, "reserved_micro_usd": status.reserved_micro_usd,
    }


@router.get("", summary="List budgets with spent and reserved amounts (admin)")
async def list_budgets(request: Request) -> dict[str, Any]:
    runtime = _admin_runtime(request)
    statuses = await asyncio.to_thread(budget_statuses, runtime.engine, runtime.clock.now())
    return {"budgets": [status_json(s) for s in statuses]}


@router.put("", summary="Create or change one budget (admin)")
async def put_budget(request: Request, body: BudgetIn) -> dict[str, Any]:
    runtime = _admin_runtime(request)
    budget = await asyncio.to_thread(
        set_budget, runtime.engine, runtime.clock, user_id=body.user_id, operation=body.operation,
        period=body.period, limit_micro_usd=usd_to_micro(body.limit_usd),
    )
    statuses = await asyncio.to_thread(budget_statuses, runtime.engine, runtime.clock.now())
    return next(status_json(s) for s in statuses if s.budget.id == budget.id)
