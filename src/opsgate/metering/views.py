"""The budgets admin API (admin role only; errors are RFC 9457 problems via OpsgateError).

``GET /v1/admin/budgets`` ->
``{"budgets": [{"id", "user_id", "operation", "period", "scope", "limit_micro_usd",
"on_exhausted", "period_start", "spent_micro_usd", "reserved_micro_usd", "left_micro_usd", "over_micro_usd",
"refused_today", "degraded_today"}]}`` for the current UTC periods (the call counts for the
current UTC day). ``left_micro_usd`` is never negative: a budget whose spent plus reserved passed
its limit shows 0 left and the excess as ``over_micro_usd`` (0 otherwise), as the CLI and the
dashboard do.

``PUT /v1/admin/budgets`` with ``{"user_id": "*", "operation": "*", "period": "day"|"month",
"limit_usd": "0.010", "on_exhausted": "refuse"|"cheaper"}`` (``*`` = any; ``limit_usd`` a decimal
string, whole micro-USD, at most ``MAX_LIMIT_USD``; ``on_exhausted`` optional, kept when absent)
creates or changes one budget, written to the ledger as ``budget.set`` with the admin as actor in
the same transaction, and answers it in the same shape. The shadow scope is
``{"user_id": "*", "operation": "@shadow"}``. Bad values are 422 ``invalid_input`` with the
message of :func:`~opsgate.metering.budgets.check_budget`, the check the CLI uses too.

``DELETE /v1/admin/budgets/{id}`` (the ``id`` of the list; no body, or ``{}``) deletes one budget
with its counters, written to the ledger as ``budget.delete`` with the admin as actor in the same
transaction, and answers ``{"deleted": {"id", "user_id", "operation", "period", "scope",
"limit_micro_usd", "on_exhausted"}}``. 404 ``not_found`` for no such budget; 409
``budget_conflict`` while calls in flight hold reservations against it (expired ones are charged
first); see :func:`~opsgate.metering.budgets.delete_budget`.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from opsgate.deps import AdminDep, NoBodyDep, RuntimeDep, body_doc, json_body
from opsgate.metering.budgets import (
    ON_EXHAUSTED,
    PERIODS,
    BudgetStatus,
    budget_statuses,
    delete_budget,
    set_budget,
    usd_to_micro,
)
from opsgate.metering.models import ANY
from opsgate.metering.reservations import expire_reservations
from opsgate.numbers import AsciiInt

router = APIRouter(prefix="/v1/admin/budgets", tags=["budgets"])
BudgetId = Annotated[AsciiInt, Path(ge=1, le=2**53 - 1)]  # a ledger integer (I-JSON)


class BudgetIn(BaseModel):
    """One budget to set. ``limit_usd`` is a decimal string (e.g. ``"25.00"``). ``period`` and
    ``on_exhausted`` list their values in the schema; :func:`set_budget` checks them, so the API
    and the CLI refuse a bad value with the same message."""

    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(default=ANY, min_length=1, max_length=128)
    operation: str = Field(default=ANY, min_length=1, max_length=64)
    period: str = Field(max_length=16, json_schema_extra={"enum": list(PERIODS)})
    limit_usd: str = Field(max_length=32)
    on_exhausted: str | None = Field(default=None, max_length=16,
                                     json_schema_extra={"enum": list(ON_EXHAUSTED)})


def status_json(status: BudgetStatus) -> dict[str, Any]:
    """The API/CLI shape of one budget and its current counters."""
    b = status.budget
    return {
        "id": b.id, "user_id": b.user_id, "operation": b.operation, "period": b.period,
        "scope": b.scope, "limit_micro_usd": b.limit_micro_usd, "on_exhausted": b.on_exhausted,
        "period_start": status.period_start.isoformat(),
        "spent_micro_usd": status.spent_micro_usd, "reserved_micro_usd": status.reserved_micro_usd,
        "left_micro_usd": status.left_micro_usd, "over_micro_usd": status.over_micro_usd,
        "refused_today": status.refused_today,
        "degraded_today": status.degraded_today,
    }


@router.get("", summary="List budgets with spent and reserved amounts (admin)")
async def list_budgets(_admin: AdminDep, runtime: RuntimeDep) -> dict[str, Any]:
    statuses = await asyncio.to_thread(budget_statuses, runtime.engine, runtime.clock.now())
    return {"budgets": [status_json(s) for s in statuses]}


@router.put("", summary="Create or change one budget (admin)", openapi_extra=body_doc(BudgetIn))
async def put_budget(admin: AdminDep, runtime: RuntimeDep,
                     body: Annotated[BudgetIn, json_body(BudgetIn)]) -> dict[str, Any]:
    budget = await asyncio.to_thread(
        set_budget, runtime.ledger, runtime.clock, actor=admin.user_id, user_id=body.user_id,
        operation=body.operation,
        period=body.period, limit_micro_usd=usd_to_micro(body.limit_usd),
        on_exhausted=body.on_exhausted,
    )
    statuses = await asyncio.to_thread(budget_statuses, runtime.engine, runtime.clock.now())
    return next(status_json(s) for s in statuses if s.budget.id == budget.id)


@router.delete("/{budget_id}", summary="Delete one budget (admin)")
async def remove_budget(admin: AdminDep, runtime: RuntimeDep, budget_id: BudgetId,
                        _body: NoBodyDep) -> dict[str, Any]:
    await asyncio.to_thread(expire_reservations, runtime.engine, runtime.clock)
    b = await asyncio.to_thread(delete_budget, runtime.ledger, actor=admin.user_id, budget_id=budget_id)
    return {"deleted": {"id": b.id, "user_id": b.user_id, "operation": b.operation, "period": b.period,
                        "scope": b.scope, "limit_micro_usd": b.limit_micro_usd, "on_exhausted": b.on_exhausted}}
