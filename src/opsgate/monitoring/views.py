"""HTTP API of monitoring (operator or admin; errors are RFC 9457 problems):

  ``GET /v1/health?window=<seconds>&operation=<id>``  the seed's HealthMetrics
  ``GET /metrics``                                     Prometheus exposition (text/plain 0.0.4)
  ``GET /v1/incidents?state=open``                     incidents, newest first
  ``GET /v1/incidents/{id}``                           one incident with timeline and notifications
  ``POST /v1/incidents/{id}/ack``                      acknowledge (stops escalation)
  ``POST /v1/incidents/{id}/resolve``                  ``{"note": "..."}``
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from opsgate.errors import InvalidInput
from opsgate.monitoring.escalation import Contacts
from opsgate.monitoring.health import compute_health
from opsgate.monitoring.incidents import IncidentService
from opsgate.monitoring.prometheus import exposition
from opsgate.monitoring.worker import build_notifiers
from opsgate.security.auth import Principal, bearer_token
from opsgate.responses import json_response
from opsgate.security.rbac import require_role


router = APIRouter(tags=["monitoring"])
MAX_WINDOW_S = 31 * 86400


def _operator(request: Request) -> Principal:
    principal = request.app.state.runtime.tokens.verify(bearer_token(request.headers.get("authorization")))
    require_role(principal, "operator")
    return principal


def _incidents(request: Request) -> IncidentService:
    rt = request.app.state.runtime
    notifiers = build_notifiers(rt.settings, rt.session)
    return IncidentService(rt.engine, rt.ledger, rt.clock, notifiers,
                           Contacts.from_settings(rt.settings, frozenset(notifiers)),
                           repeat_interval_s=rt.settings.alert_repeat_interval_s)


@router.get("/v1/health", summary="Health metrics over a window (default 1 h)")
async def health(request: Request, window: int | None = None, operation: str | None = None) -> Response:
    _operator(request)
    rt = request.app.state.runtime
    window_s = window or rt.settings.health_window_s
    if not 0 < window_s <= MAX_WINDOW_S:
        raise InvalidInput(f"window must be between 1 and {MAX_WINDOW_S} seconds")
    metrics = await asyncio.to_thread(compute_health, rt.engine, rt.clock.now(), window_s, operation)
    return json_response(metrics.model_dump())


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    _operator(request)
    body = await asyncio.to_thread(exposition, request.app.state.runtime)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/incidents", summary="Incidents, newest first")
async def list_incidents(request: Request, state: str | None = None) -> Response:
    _operator(request)
    return json_response({"incidents": await asyncio.to_thread(_incidents(request).list, state)})


@router.get("/v1/incidents/{incident_id}", summary="One incident with its timeline")
async def show_incident(request: Request, incident_id: str) -> Response:
    _operator(request)
    return json_response(await asyncio.to_thread(_incidents(request).show, incident_id))


@router.post("/v1/incidents/{incident_id}/ack", summary="Acknowledge an incident (ledgered)")
async def ack_incident(request: Request, incident_id: str) -> Response:
    who = _operator(request)
    return json_response(await asyncio.to_thread(_incidents(request).acknowledge, incident_id, who.user_id))


@router.post("/v1/incidents/{incident_id}/resolve", summary="Resolve an incident with a note (ledgered)")
async def resolve_incident(request: Request, incident_id: str) -> Response:
    who = _operator(request)
    note = _note(await request.body())
    return json_response(await asyncio.to_thread(_incidents(request).resolve, incident_id, who.user_id, note))


def _note(body: bytes) -> str:
    try:
        data: Any = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        raise InvalidInput("The request body is not valid JSON") from None
    note = data.get("note") if isinstance(data, dict) else None
    if not isinstance(note, str) or not 0 < len(note) <= 2000:
        raise InvalidInput("note: a resolution note of 1 to 2,000 characters is required")
    return note
