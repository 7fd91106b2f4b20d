"""The nine AI operations and their registry.

``OPERATIONS`` maps each public operation id to its :class:`~opsgate.operations.base.Operation`
instance; :func:`get_operation` looks one up. Drive an operation only through
``op.Input.model_validate(body)``, ``op.prepare(data)`` and ``op.finish(prepared, answer)``.
"""

from __future__ import annotations

from opsgate.errors import NotFound
from opsgate.operations.analytics import AnalyticsAnomaly, AnalyticsSummary
from opsgate.operations.base import Operation, Prepared
from opsgate.operations.calendar import CalendarPrep, CalendarTime
from opsgate.operations.email import EmailClassify, EmailCompose, EmailRespond
from opsgate.operations.tasks import TaskBreakdown, TaskPrioritize

OPERATIONS: dict[str, Operation] = {
    op.id: op
    for op in (
        EmailCompose(), EmailClassify(), EmailRespond(), CalendarPrep(), CalendarTime(),
        TaskPrioritize(), TaskBreakdown(), AnalyticsSummary(), AnalyticsAnomaly(),
    )
}


def get_operation(op_id: str) -> Operation:
    """The operation named ``op_id``; raises :class:`opsgate.errors.NotFound` for unknown ids."""
    try:
        return OPERATIONS[op_id]
    except KeyError:
        raise NotFound(f"unknown operation; known: {', '.join(sorted(OPERATIONS))}") from None


__all__ = ["OPERATIONS", "Operation", "Prepared", "get_operation"]
