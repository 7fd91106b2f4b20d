"""HTTP API of the rollout domain (FastAPI router; errors are RFC 9457 problems via OpsgateError).

Admin (role ``admin``; every change is written to the ledger):
  ``GET /v1/admin/toggles``                 every toggle with its adoption numbers
  ``GET|PUT /v1/admin/toggles/{operation}`` one toggle; PUT body: any of ``enabled``,
                                            ``rollout_percentage`` (0..100), ``group_id``,
                                            ``opt_in_required``, ``kill_switch``, plus ``reason``
  ``POST /v1/admin/rollouts``               ``{"operations": [...], "plan": {...}?, "variant": "name"?,
                                            "shadow_percent": 1..100?}`` -> 201 (with ``variant``: a
                                            variant rollout of one operation; with
                                            ``shadow_percent``, starting with a shadow stage)
  ``GET /v1/admin/rollouts``                rollouts, newest first, each with its history,
                                            ``shadow`` (its shadow calls, or null) and
                                            ``comparison`` (a variant rollout's canary against
                                            control per metric, :mod:`.comparison`, or null)
  ``POST /v1/admin/rollouts/{id}/advance``  promote now (no body, or ``{}``)
  ``POST /v1/admin/rollouts/{id}/rollback`` ``{"reason": "..."}``
Any authenticated user (only their own data):
  ``GET|PUT /v1/me/settings``               opt-ins: ``{"opt_in": {"email-compose": true}}``
  ``GET /v1/banners``                       in-app banners of rolled-back operations
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from opsgate.deps import AdminDep, NoBodyDep, RolloutDep, UserDep, body_doc, json_body
from opsgate.numbers import AsciiInt
from opsgate.responses import json_response
from opsgate.rollout.comparison import comparison
from opsgate.rollout.controller import Decision, Plan
from opsgate.rollout.plans import parse_plan
from opsgate.rollout.service import Rollout, RolloutService, ToggleChange
from opsgate.rollout.toggles import Toggle
from opsgate.security.operator_input import REASON_MAX_CHARS, Identifier, OperatorText, RequiredText

router = APIRouter(tags=["rollout"])
RolloutId = Annotated[AsciiInt, Path(ge=1, le=2**63 - 1)]


class ToggleUpdate(BaseModel):
    """Body of ``PUT /v1/admin/toggles/{operation}``; omitted fields stay as they are."""

    model_config = ConfigDict(extra="forbid", strict=True)
    enabled: bool | None = None
    rollout_percentage: int | None = Field(default=None, ge=0, le=100)
    group_id: Identifier | None = Field(default=None, min_length=1, max_length=128)
    opt_in_required: bool | None = None
    kill_switch: bool | None = None
    reason: OperatorText = Field(default="", max_length=REASON_MAX_CHARS)


class RolloutStart(BaseModel):
    """Body of ``POST /v1/admin/rollouts``; without ``plan`` the seed's default plan; with
    ``variant``, the candidate variant of the one operation named (a variant rollout)."""

    model_config = ConfigDict(extra="forbid")
    operations: list[str] = Field(min_length=1)
    plan: dict[str, Any] | None = None
    variant: str | None = Field(default=None, min_length=1, max_length=48)
    shadow_percent: int | None = Field(default=None, ge=1, le=100)


class RollbackBody(BaseModel):
    """Body of ``POST /v1/admin/rollouts/{id}/rollback``."""

    model_config = ConfigDict(extra="forbid")
    reason: RequiredText = Field(max_length=REASON_MAX_CHARS)


class OptIns(BaseModel):
    """Body of ``PUT /v1/me/settings``: the caller's opt-in choice per operation."""

    model_config = ConfigDict(extra="forbid", strict=True)
    opt_in: dict[str, bool]


def toggle_json(t: Toggle, adoption: dict[str, int] | None = None) -> dict[str, Any]:
    """API shape of a toggle (``updated_at`` ISO 8601 UTC)."""
    body: dict[str, Any] = {
        "operation": t.operation, "enabled": t.enabled, "rollout_percentage": t.rollout_percentage,
        "group_id": t.group_id, "opt_in_required": t.opt_in_required, "kill_switch": t.kill_switch,
        "updated_at": t.updated_at.isoformat(), "updated_by": t.updated_by,
    }
    if adoption is not None:
        body["adoption"] = adoption
    return body


def rollout_json(svc: RolloutService, rollout: Rollout) -> dict[str, Any]:
    """One rollout as ``GET /v1/admin/rollouts`` lists it: :meth:`Rollout.to_json` plus ``shadow``,
    ``history`` and, for a variant rollout, ``comparison`` (else null). Blocking (database)."""
    report = svc.shadow(rollout)
    history = svc.history(rollout.id)
    return {**rollout.to_json(), "shadow": None if report is None else report.to_json(), "history": history,
            "comparison": comparison(history, svc.limits, rollout.state.plan) if rollout.variant else None}


def _decision_json(rollout_id: int, d: Decision) -> dict[str, Any]:
    return {"rollout_id": rollout_id, "action": d.action.value, "state": d.after.state.value,
            "stage_index": d.after.stage_index, "reason": d.reason, "numbers": d.numbers}


@router.get("/v1/admin/toggles", summary="Every feature toggle with adoption numbers")
async def list_toggles(_admin: AdminDep, svc: RolloutDep) -> Response:
    toggles, adoption = await asyncio.to_thread(lambda: (svc.list_toggles(), svc.adoption()))
    return json_response({"toggles": [toggle_json(t, adoption[t.operation]) for t in toggles]})


@router.get("/v1/admin/toggles/{operation}", summary="One feature toggle")
async def get_toggle(_admin: AdminDep, svc: RolloutDep, operation: str) -> Response:
    return json_response(toggle_json(await asyncio.to_thread(svc.get_toggle, operation)))


@router.put("/v1/admin/toggles/{operation}", summary="Change a feature toggle (ledgered)",
            openapi_extra=body_doc(ToggleUpdate))
async def put_toggle(admin: AdminDep, svc: RolloutDep, operation: str,
                     body: Annotated[ToggleUpdate, json_body(ToggleUpdate)]) -> Response:
    change = ToggleChange(**body.model_dump(exclude={"reason"}))
    toggle = await asyncio.to_thread(svc.set_toggle, operation, change, admin.user_id, body.reason)
    return json_response(toggle_json(toggle))


@router.post("/v1/admin/rollouts", status_code=201, summary="Start a canary rollout",
             openapi_extra=body_doc(RolloutStart))
async def start_rollout(admin: AdminDep, svc: RolloutDep,
                        body: Annotated[RolloutStart, json_body(RolloutStart)]) -> Response:
    plan = parse_plan(body.plan) if body.plan is not None else Plan()
    rollout = await asyncio.to_thread(svc.start_rollout, body.operations, plan, admin.user_id, body.variant,
                                      body.shadow_percent)
    return json_response(rollout.to_json(), status_code=201)


@router.get("/v1/admin/rollouts", summary="Rollouts with their decision history")
async def list_rollouts(_admin: AdminDep, svc: RolloutDep) -> Response:
    def load() -> list[dict[str, Any]]:
        return [rollout_json(svc, r) for r in svc.list_rollouts()]

    return json_response({"rollouts": await asyncio.to_thread(load)})


@router.post("/v1/admin/rollouts/{rollout_id}/advance", summary="Promote a rollout now")
async def advance_rollout(admin: AdminDep, svc: RolloutDep, rollout_id: RolloutId, _body: NoBodyDep) -> Response:
    decision = await asyncio.to_thread(svc.advance, rollout_id, admin.user_id)
    return json_response(_decision_json(rollout_id, decision))


@router.post("/v1/admin/rollouts/{rollout_id}/rollback", summary="Roll a rollout back",
             openapi_extra=body_doc(RollbackBody))
async def rollback_rollout(admin: AdminDep, svc: RolloutDep, rollout_id: RolloutId,
                           body: Annotated[RollbackBody, json_body(RollbackBody)]) -> Response:
    decision = await asyncio.to_thread(svc.rollback, rollout_id, body.reason, admin.user_id)
    return json_response(_decision_json(rollout_id, decision))


async def _settings(svc: RolloutService, user_id: str) -> dict[str, Any]:
    opt_in = await asyncio.to_thread(svc.get_opt_ins, user_id)
    verdicts = {op: svc.snapshot.check(op, user_id) for op in opt_in} if svc.snapshot else {}
    return {"user_id": user_id, "opt_in": opt_in,
            "operations": {op: {"available": v.allowed, "reason": v.reason, "detail": v.explain()}
                           for op, v in verdicts.items()}}


@router.get("/v1/me/settings", summary="The caller's opt-ins and which operations they can use")
async def get_settings(me: UserDep, svc: RolloutDep) -> Response:
    return json_response(await _settings(svc, me.user_id))


@router.put("/v1/me/settings", summary="Opt in to (or out of) operations, for the caller only",
            openapi_extra=body_doc(OptIns))
async def put_settings(me: UserDep, svc: RolloutDep, body: Annotated[OptIns, json_body(OptIns)]) -> Response:
    await asyncio.to_thread(svc.set_opt_ins, me.user_id, body.opt_in)
    return json_response(await _settings(svc, me.user_id))


@router.get("/v1/banners", summary="In-app banners (operations rolled back)")
async def banners(_user: UserDep, svc: RolloutDep) -> Response:
    return json_response({"banners": await asyncio.to_thread(svc.banners)})
