"""The nine AI operations and their registry.

``OPERATIONS`` maps each public operation id to its :class:`~opsgate.operations.base.Operation`
instance; :func:`get_operation` looks one up. Drive an operation only through
``op.Input.model_validate(body)``, ``op.prepare(data)`` and ``op.finish(prepared, answer)``.
"""

from __future__ import annotations

from pathlib import Path

from opsgate.errors import NotFound
from opsgate.operations.analytics import AnalyticsAnomaly, AnalyticsSummary
from opsgate.operations.base import Operation, Prepared
from opsgate.operations.calendar import CalendarPrep, CalendarTime
from opsgate.operations.email import EmailClassify, EmailCompose, EmailRespond
from opsgate.operations.prompts import PromptCatalogue, load_catalogue
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


def prompt_catalogue(operator_dir: Path | None = None) -> PromptCatalogue:
    """Every prompt version of the nine operations: the package's plus ``operator_dir``'s
    (raises :class:`~opsgate.operations.prompts.PromptConfigError`, see ``load_catalogue``)."""
    return load_catalogue({op_id: op.prompt_fields for op_id, op in OPERATIONS.items()}, operator_dir)


__all__ = ["OPERATIONS", "Operation", "Prepared", "get_operation", "prompt_catalogue"]
