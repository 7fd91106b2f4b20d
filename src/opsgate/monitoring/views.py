"""HTTP API of monitoring (operator or admin; errors are RFC 9457 problems):

  ``GET /v1/health?window=<seconds>&operation=<id>``  the seed's HealthMetrics (an unknown
                                                      operation is 404, never an idle one)
  ``GET /metrics``                                     Prometheus exposition (text/plain 0.0.4); an
                                                      operator JWT or the scrape token (:mod:`~opsgate.security.metrics_token`)
  ``GET /v1/incidents?state=open``                     incidents, newest first (``state``: open,
                                                      acknowledged or resolved; another is 422)
  ``GET /v1/incidents/{id}``                           one incident with timeline and notifications
  ``POST /v1/incidents/{id}/ack``                      acknowledge (stops escalation; no body, or ``{}``)
  ``POST /v1/incidents/{id}/resolve``                  ``{"note": "..."}``
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Request, Security
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from opsgate.deps import IncidentsDep, NoBodyDep, OperatorDep, RuntimeDep, body_doc, get_principal, json_body, require_role
from opsgate.errors import InvalidInput
from opsgate.monitoring.health import compute_health
from opsgate.monitoring.prometheus import exposition
from opsgate.operations import get_operation
from opsgate.numbers import AsciiInt
from opsgate.responses import json_response
from opsgate.security import metrics_token
from opsgate.security.operator_input import RequiredText

router = APIRouter(tags=["monitoring"])
MAX_WINDOW_S = 31 * 86400


class ResolveBody(BaseModel):
    """Body of ``POST /v1/incidents/{id}/resolve``."""

    model_config = ConfigDict(extra="forbid")
    note: RequiredText = Field(max_length=2000, description="What was done; a resolution note is required")


@router.get("/v1/health", summary="Health metrics over a window (default 1 h)")
async def health(_operator: OperatorDep, rt: RuntimeDep, window: AsciiInt | None = None,
                 operation: str | None = None) -> Response:
    window_s = window or rt.settings.health_window_s
    if not 0 < window_s <= MAX_WINDOW_S:
        raise InvalidInput(f"window must be between 1 and {MAX_WINDOW_S} seconds")
    if operation is not None:
        get_operation(operation)  # 404 naming the known ones: an unknown name is not an idle operation
    metrics = await asyncio.to_thread(compute_health, rt.engine, rt.clock.now(), window_s, operation)
    return json_response(metrics.model_dump())


def scraper(request: Request, runtime: RuntimeDep) -> None:
    """``GET /metrics``'s caller: the scrape token of ``OPSGATE_METRICS_TOKEN_FILE`` (compared in
    constant time), else an operator's JWT (401 / 403 as :data:`OperatorDep`)."""
    if not metrics_token.accepts(runtime.settings.metrics_token_file, request.headers.get("authorization")):
        require_role("operator")(get_principal(request, runtime, None), runtime)


@router.get("/metrics", summary="Prometheus metrics (an operator JWT or the scrape token)")
async def metrics(_scraper: Annotated[None, Security(scraper, scopes=["operator"])], rt: RuntimeDep) -> Response:
    body = await asyncio.to_thread(exposition, rt.gateway.router, rt.engine, rt.clock.now(), rt.toggles)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/incidents", summary="Incidents, newest first")
async def list_incidents(_operator: OperatorDep, incidents: IncidentsDep,
                         state: Literal["open", "acknowledged", "resolved"] | None = None) -> Response:
    return json_response({"incidents": await asyncio.to_thread(incidents.list, state)})


@router.get("/v1/incidents/{incident_id}", summary="One incident with its timeline")
async def show_incident(_operator: OperatorDep, incidents: IncidentsDep, incident_id: str) -> Response:
    return json_response(await asyncio.to_thread(incidents.show, incident_id))


@router.post("/v1/incidents/{incident_id}/ack", summary="Acknowledge an incident (ledgered)")
async def ack_incident(operator: OperatorDep, incidents: IncidentsDep, incident_id: str, _body: NoBodyDep) -> Response:
    return json_response(await asyncio.to_thread(incidents.acknowledge, incident_id, operator.user_id))


@router.post("/v1/incidents/{incident_id}/resolve", summary="Resolve an incident with a note (ledgered)",
             openapi_extra=body_doc(ResolveBody))
async def resolve_incident(operator: OperatorDep, incidents: IncidentsDep, incident_id: str,
                           body: Annotated[ResolveBody, json_body(ResolveBody)]) -> Response:
    return json_response(await asyncio.to_thread(incidents.resolve, incident_id, operator.user_id, body.note))
