"""Where other domains' events enter alerting: each becomes a ``monitoring_signals`` row (one
cheap insert on the caller's path) that the worker turns into an incident.

- metering's :class:`~opsgate.metering.enforcement.EnforcementHooks`: every
  :class:`EnforcementFailure` → signal ``enforcement_failure`` (subject: the operation or ``*``);
  the worker opens a P1 ``budget_enforcement`` incident and disables the operation.
- rollout's ``RolloutService.listeners``: every :class:`RolloutEvent` (``rollout.rolled_back`` P2,
  ``rollout.escalated`` P1) → a signal of that kind (subject: the rollout id).
- routing's :class:`~opsgate.routing.served.ModelWatch`: every :class:`ModelEvent`
  (``model_substituted`` P3, ``model_unavailable`` P2, each once per episode) → a signal of that
  kind (subject: ``"<operation> <provider>/<model>"``).
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, insert

from opsgate.clock import Clock
from opsgate.metering.enforcement import EnforcementFailure, EnforcementHooks
from opsgate.monitoring.health import ENFORCEMENT_FAILURE
from opsgate.monitoring.models import signals
from opsgate.rollout.service import RolloutEvent, RolloutService
from opsgate.routing.served import ModelEvent, ModelWatch
from opsgate.store.db import begin_write

log = logging.getLogger("opsgate.monitoring")


def record_signal(engine: Engine, clock: Clock, kind: str, subject: str, *, ok: bool,
                  detail: str, severity: str | None = None) -> None:
    """Insert one signal row (``detail`` cut to 2,000 characters)."""
    with begin_write(engine) as conn:
        conn.execute(insert(signals).values(kind=kind, subject=subject[:128], severity=severity, ok=ok,
                                            detail=detail[:2000], at=clock.now()))


def attach(engine: Engine, clock: Clock, enforcement: EnforcementHooks | None,
           rollout: RolloutService | None, models: ModelWatch | None = None) -> None:
    """Subscribe alerting to metering's enforcement failures, rollout's alert events and
    routing's model events."""
    if models is not None:
        def on_model(event: ModelEvent) -> None:
            record_signal(engine, clock, event.kind, event.subject, ok=False, severity=event.severity,
                          detail=event.detail)
        models.listeners.append(on_model)
    if enforcement is not None:
        def on_failure(event: EnforcementFailure) -> None:
            record_signal(engine, clock, ENFORCEMENT_FAILURE, event.operation or "*", ok=False,
                          severity="P1", detail=f"{event.reason}: {event.detail}")
        enforcement.subscribe(on_failure)
    if rollout is not None:
        def on_rollout(event: RolloutEvent) -> None:
            record_signal(engine, clock, event.kind, str(event.rollout_id), ok=False, severity=event.severity,
                          detail=f"{', '.join(event.operations)}{_variant(event)}: {event.reason}")
        rollout.listeners.append(on_rollout)


def _variant(event: RolloutEvent) -> str:
    return f" (variant {event.variant})" if event.variant else ""
