"""The metering steps of the pipeline in one object: rate limit (step 3), reserve (step 5) and
settle (step 8), with the enforcement-failure seam.

Database work runs in a worker thread (``asyncio.to_thread``) so a busy SQLite lock or a slow
PostgreSQL never blocks the event loop. Enforcement fails closed: if a reservation cannot be
written the call is refused with 503 ``budget_unavailable`` and an :class:`EnforcementFailure` is
published. A settle that fails leaves the reservation open; it expires and is charged its worst
case by :func:`~opsgate.metering.reservations.expire_reservations`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from sqlalchemy import Engine

from opsgate.clock import Clock
from opsgate.config import Settings
from opsgate.errors import OpsgateError
from opsgate.metering.enforcement import (
    ENFORCEMENT_ERROR,
    OVERSPEND,
    EnforcementFailure,
    EnforcementHooks,
)
from opsgate.metering.errors import BudgetExceeded, BudgetUnavailable
from opsgate.metering.prices import PriceTable, PriceTableError
from opsgate.metering.ratelimit import RateLimiter, RateLimits, make_storage
from opsgate.metering.reservations import Reservation, expire_reservations, reserve, settle
from opsgate.metering.worstcase import call_worst_case_micro_usd
from opsgate.providers.base import CompletionRequest

log = logging.getLogger("opsgate.metering")

BILLING_UNKNOWN_KINDS = frozenset({"timeout", "malformed_response", "empty_answer", "content_filtered"})
"""Attempt outcomes after which the provider may have billed tokens we never saw: the request
was sent and either no complete answer or an unusable 200 came back."""


def usage_unknown(exc: BaseException) -> bool:
    """Whether a failed call may have been billed for usage the gateway could not read: an
    unexpected (non-Opsgate) error mid-call, or any attempt in :data:`BILLING_UNKNOWN_KINDS`."""
    if not isinstance(exc, OpsgateError):
        return True
    attempts = getattr(exc, "attempts", None) or ()
    return any(a.outcome_kind in BILLING_UNKNOWN_KINDS for a in attempts)


class MeteringService:
    """Rate limits, budget reservations and settlements for one gateway process.

    ``hooks`` receives every :class:`EnforcementFailure`; ``reservation_ttl_s`` is how long an
    unsettled reservation is held before :meth:`expire` charges it (longer than any call).
    """

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        prices: PriceTable,
        limiter: RateLimiter,
        hooks: EnforcementHooks,
        *,
        reservation_ttl_s: float,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.prices = prices
        self.limiter = limiter
        self.hooks = hooks
        self.reservation_ttl_s = reservation_ttl_s

    async def rate_limit(self, user_id: str, operation: str) -> None:
        """Step 3; raises :class:`~opsgate.metering.errors.RateLimitExceeded` (429)."""
        await self.limiter.admit(user_id, operation)

    async def reserve(
        self,
        request_id: str,
        user_id: str,
        operation: str,
        request: CompletionRequest,
        models: Iterable[str],
    ) -> Reservation:
        """Step 5: hold the worst case of ``request`` on ``models`` against every applicable budget.

        Raises :class:`BudgetExceeded` (402) or, when the store fails, :class:`BudgetUnavailable`
        (503) after publishing an ``enforcement_error`` event.
        """
        worst = call_worst_case_micro_usd(request, models, self.prices)
        try:
            return await asyncio.to_thread(
                reserve, self.engine, self.clock, request_id=request_id, user_id=user_id,
                operation=operation, worst_micro_usd=worst, ttl_s=self.reservation_ttl_s,
            )
        except BudgetExceeded:
            raise
        except Exception as exc:
            self._publish(ENFORCEMENT_ERROR, operation, f"reserve failed: {type(exc).__name__}",
                          request_id)
            raise BudgetUnavailable() from exc

    async def settle(
        self, reservation: Reservation, actual_micro_usd: int, tokens: int, *, unknown_usage: bool
    ) -> None:
        """Step 8: charge the call, release the rest, count its tokens; publish ``overspend`` for
        every budget the charge took over its limit. Never raises."""
        await self.limiter.charge_tokens(reservation.user_id, reservation.operation, tokens)
        try:
            result = await asyncio.to_thread(
                settle, self.engine, self.clock, reservation, actual_micro_usd,
                unknown_usage=unknown_usage,
            )
        except Exception as exc:
            self._publish(ENFORCEMENT_ERROR, reservation.operation,
                          f"settle failed ({type(exc).__name__}); the reservation will expire "
                          "and be charged its worst case", reservation.request_id)
            return
        for budget in result.over_limit:
            self._publish(OVERSPEND, reservation.operation,
                          f"the {budget.period} budget of {budget.scope} is over its limit after a "
                          f"charge of {result.charged_micro_usd} micro-USD", reservation.request_id)

    def expire(self) -> list[str]:
        """Charge expired reservations at their worst case (see :func:`expire_reservations`)."""
        return expire_reservations(self.engine, self.clock)

    def _publish(self, reason: str, operation: str, detail: str, request_id: str | None) -> None:
        self.hooks.publish(EnforcementFailure(reason, operation, detail, self.clock.now(), request_id))


def require_prices(prices: PriceTable, models: Iterable[str]) -> None:
    """Refuse to start when a routed model has no price (it could be neither reserved nor
    metered). Raises :class:`~opsgate.metering.prices.PriceTableError` naming the models."""
    missing = sorted({m for m in models if m not in prices.prices})
    if missing:
        raise PriceTableError(f"routed model(s) without a price: {', '.join(missing)}")


def build_metering(
    settings: Settings, engine: Engine, clock: Clock, prices: PriceTable, models: Iterable[str]
) -> MeteringService:
    """The process's :class:`MeteringService` from ``settings`` (rate limits, Redis URL,
    reservation TTL), after checking every routed model has a price and charging reservations
    that expired while no gateway ran."""
    require_prices(prices, models)
    limits = RateLimits(
        user_rpm=settings.rate_limit_user_rpm,
        user_tpm=settings.rate_limit_user_tpm,
        user_operation_rpm=settings.rate_limit_user_operation_rpm,
        user_operation_tpm=settings.rate_limit_user_operation_tpm,
    )
    limiter = RateLimiter(limits, make_storage(settings.redis_url, settings.rate_limit_key_prefix))
    service = MeteringService(engine, clock, prices, limiter, EnforcementHooks(),
                              reservation_ttl_s=settings.budget_reservation_ttl_s)
    service.expire()
    return service
