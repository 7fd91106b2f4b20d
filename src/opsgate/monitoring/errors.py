"""The monitoring domain's errors (see the catalogue in :mod:`opsgate.errors`)."""

from __future__ import annotations

from opsgate.errors import OpsgateError


class IncidentConflict(OpsgateError):
    """The incident is not in a state that allows this change (409)."""

    code = "incident_conflict"
    status = 409
    title = "Incident state conflict"
