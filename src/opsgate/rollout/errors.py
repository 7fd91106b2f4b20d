"""The rollout domain's errors, mapped by the API to RFC 9457 problems."""

from __future__ import annotations

from opsgate.errors import NotFound, OpsgateError


class OperationDisabled(OpsgateError):
    """The caller may not use this operation now (403 ``operation_disabled``).

    ``reason`` is one of ``disabled``, ``kill_switch``, ``not_in_rollout``, ``opt_in_required``;
    ``detail`` explains it in terms of the caller's own account only.
    """

    code = "operation_disabled"
    status = 403
    title = "Operation disabled"

    def __init__(self, detail: str, reason: str) -> None:
        super().__init__(detail)
        self.reason = reason


class RolloutConflict(OpsgateError):
    """The request contradicts the rollout's current state (409 ``rollout_conflict``), e.g.
    advancing a rolled-back rollout or starting a second rollout for the same operation."""

    code = "rollout_conflict"
    status = 409
    title = "Rollout conflict"


class RolloutNotFound(NotFound):
    """No rollout with that id (404 ``not_found``)."""


class VariantNotFound(NotFound):
    """The operation has no variant of that name (404 ``not_found``)."""


class InvalidPlan(OpsgateError):
    """A rollout plan or toggle change is malformed (422 ``invalid_input``)."""

    code = "invalid_input"
    status = 422
    title = "Invalid input"
