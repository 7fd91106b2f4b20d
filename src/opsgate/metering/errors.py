"""Metering refusals: budgets (402 ``budget_exceeded``; 409 ``budget_conflict`` for a deletion
while calls hold reservations), rate limits (429 ``rate_limited``), and an enforcement that could
not run (503 ``budget_unavailable``, the gateway fails closed)."""

from __future__ import annotations

from collections.abc import Mapping

from opsgate.errors import OpsgateError


class BudgetExceeded(OpsgateError):
    """Reserving the call's worst-case cost would take a budget over its limit (402)."""

    code = "budget_exceeded"
    status = 402
    title = "A budget would be exceeded"


class BudgetConflict(OpsgateError):
    """The budget cannot be deleted now: calls in flight hold reservations against it (409)."""

    code = "budget_conflict"
    status = 409
    title = "The budget cannot be changed now"


class RateLimitExceeded(OpsgateError):
    """A gateway-side rate limit is reached (429). ``retry_after`` is in seconds; the problem layer
    sends it as ``Retry-After`` (RFC 9110 §10.2.3), and ``response_headers`` (field name -> value, e.g. the
    ``RateLimit`` / ``RateLimit-Policy`` fields of a request limit) as they are. Never counted as
    a provider failure."""

    code = "rate_limited"
    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: float, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.response_headers: Mapping[str, str] = headers or {}


class BudgetUnavailable(OpsgateError):
    """The budget store could not be read or written, so the call is refused rather than run
    unbudgeted (503)."""

    code = "budget_unavailable"
    status = 503
    title = "Budget enforcement is unavailable"


class PriceTableError(OpsgateError):
    """The price table is malformed; ``detail`` names the model or provider and the field."""

    code = "price_table_invalid"
    title = "The price table is invalid"


class UnknownModelPrice(OpsgateError):
    """A model has no entry in the price table, so its cost cannot be metered."""

    code = "unknown_model_price"
    title = "No price is known for this model"
