"""What each provider request of a call may have been billed (issue 16, item 0).

A call can send several requests: retries, fallbacks, a schema-repair request. Each one the
provider may have billed is charged on its own and written as one ``ai_operation_attempts`` row,
so reconciliation matches it against the invoice of the provider and model that served it:

- ``reported``: the provider reported usage (a good answer, a refusal, an unusable answer that
  still carried its usage object): charged that usage at the model's price.
- ``estimated``: the provider may have billed usage we never saw (a timeout after the request
  left, a 200 whose usage could not be read, a request in flight when the call broke off):
  charged the request's reserved worst case, flagged.
- not billed (no row): an error status (providers do not bill 4xx/5xx), a refused connection, a
  target skipped by its breaker or the deadline.

Money in integer micro-USD, token counts integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opsgate.providers.base import Usage, normalise_model

REPORTED, ESTIMATED = "reported", "estimated"
TIMEOUT = "timeout"
INTERRUPTED = "interrupted"
"""The outcome of a request that was admitted and may have left when the call broke off."""


def billing(*, sent: bool, outcome_kind: str, http_status: int | None, reported: bool) -> str | None:
    """How one attempt is charged: :data:`REPORTED` when the provider ``reported`` usage,
    :data:`ESTIMATED` when a ``sent`` request timed out or got a 200 without readable usage,
    ``None`` when it cannot have been billed (not sent, or an HTTP error status)."""
    if not sent:
        return None
    if reported:
        return REPORTED
    if outcome_kind == TIMEOUT or http_status == 200:
        return ESTIMATED
    return None


def billed_model(model: str, served_model: str | None) -> str:
    """The model a request is priced and invoiced under: the ``served_model`` the provider
    reported, else the requested ``model``, normalised
    (:func:`~opsgate.providers.base.normalise_model`: a dated snapshot is its model)."""
    return normalise_model(served_model or model)


@dataclass(frozen=True, slots=True)
class AttemptCharge:
    """One billed (or possibly billed) provider request of a call: ``seq`` its position among
    the call's requests (from 0), the ``provider`` and requested ``model`` (``served_model`` as
    reported), the router's ``outcome`` kind, ``billing`` (:data:`REPORTED` | :data:`ESTIMATED`),
    the reported ``usage`` (zero when estimated) and ``cost_micro_usd``."""

    seq: int
    provider: str
    model: str
    served_model: str | None
    outcome: str
    billing: str
    usage: Usage
    cost_micro_usd: int

    def row(self, request_id: str, created_at: datetime) -> dict[str, Any]:
        """The ``ai_operation_attempts`` row."""
        return {
            "request_id": request_id,
            "seq": self.seq,
            "provider": self.provider,
            "model": self.model,
            "served_model": self.served_model,
            "outcome": self.outcome,
            "billing": self.billing,
            "input_tokens": self.usage.input_tokens,
            "output_tokens": self.usage.output_tokens,
            "cache_write_tokens": self.usage.cache_write_tokens + self.usage.cache_write_1h_tokens,
            "cache_read_tokens": self.usage.cache_read_tokens,
            "cost_micro_usd": self.cost_micro_usd,
            "created_at": created_at,
        }
