"""The seam between budget enforcement and the alerting / rollout issues.

When enforcement itself fails (the budget store errors) or spend is found above a limit (after a
settle, or by invoice reconciliation), an :class:`EnforcementFailure` is published. Subscribers,
registered by the alerting issue (page someone) and the rollout issue (disable ``operation``),
receive every event; a subscriber that raises is logged and never breaks the request path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

log = logging.getLogger("opsgate.metering")

ENFORCEMENT_ERROR = "enforcement_error"
OVERSPEND = "overspend"
RECONCILIATION_DISCREPANCY = "reconciliation_discrepancy"


@dataclass(frozen=True, slots=True)
class EnforcementFailure:
    """One enforcement failure.

    ``reason``: :data:`ENFORCEMENT_ERROR`, :data:`OVERSPEND` or :data:`RECONCILIATION_DISCREPANCY`;
    ``operation``: the operation to disable (``None`` when it concerns every operation);
    ``detail``: human text without secrets; ``at``: UTC time; ``request_id`` when one call caused it.
    """

    reason: str
    operation: str | None
    detail: str
    at: datetime
    request_id: str | None = None


Subscriber = Callable[[EnforcementFailure], None]


class EnforcementHooks:
    """A list of subscribers; :meth:`publish` calls each one in order."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call ``subscriber(event)`` for every future event."""
        self._subscribers.append(subscriber)

    def publish(self, event: EnforcementFailure) -> None:
        """Log ``event`` at ERROR and hand it to every subscriber; their exceptions are logged."""
        log.error("budget enforcement failure: %s on %s: %s", event.reason,
                  event.operation or "all operations", event.detail)
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:
                log.exception("an enforcement-failure subscriber raised")
