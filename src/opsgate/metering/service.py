"""The metering steps of the pipeline in one object: rate limit (step 3), reserve (step 5) and
settle (step 8), with the enforcement-failure seam.

The reservation and the settlement run inside the ledger writer's transactions (the intent's and
the result's), so admitting a call, ledgering it and charging it cost no extra commits and never
contend for the SQLite write lock. Enforcement fails closed: if a reservation cannot be written the
call is refused with 503 ``budget_unavailable`` and an :class:`EnforcementFailure` is published. A
settle that fails leaves the reservation open; it expires and is charged its worst case by
:func:`~opsgate.metering.reservations.expire_reservations`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Connection, Engine

from opsgate.clock import Clock
from opsgate.config import Settings
from opsgate.errors import OpsgateError
from opsgate.ledger.writer import InTransaction
from opsgate.metering.enforcement import (
    ENFORCEMENT_ERROR,
    OVERSPEND,
    EnforcementFailure,
    EnforcementHooks,
)
from opsgate.metering.errors import BudgetExceeded, BudgetUnavailable, PriceTableError, UnknownModelPrice
from opsgate.metering.prices import PriceSource
from opsgate.metering.ratelimit import RateLimiter, RateLimits, make_request_log, make_token_windows
from opsgate.metering.reservations import (
    Charge,
    Hold,
    Reservation,
    Settlement,
    charge,
    charge_at_once,
    expire_reservations,
    extend,
    hold,
    hold_at_once,
)
from opsgate.metering.tokenlimits import TokenHold
from opsgate.metering.worstcase import (
    attempt_worst_case_micro_usd,
    attempt_worst_cases_micro_usd,
    call_worst_case_tokens,
)
from opsgate.providers.base import CompletionRequest
from opsgate.store.db import savepoint

log = logging.getLogger("opsgate.metering")
T = TypeVar("T")

class MeteringService:
    """Rate limits, budget reservations and settlements for one gateway process.

    ``hooks`` receives every :class:`EnforcementFailure`; ``reservation_ttl_s`` is how long an
    unsettled reservation is held before :meth:`expire` charges it (longer than any call).
    """

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        prices: PriceSource,
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

    async def rate_limit(self, user_id: str, operation: str) -> Mapping[str, str]:
        """Step 3; raises :class:`~opsgate.metering.errors.RateLimitExceeded` (429). Returns the
        response's RateLimit header fields (:meth:`RateLimiter.admit`)."""
        return await self.limiter.admit(user_id, operation)

    async def take_tokens(self, user_id: str, operation: str, request: CompletionRequest) -> TokenHold | None:
        """Step 5, first half: hold the worst-case tokens of ``request`` against the token rate
        limits (429 when one has no room); settle the hold with :meth:`settle_tokens`."""
        return await self.limiter.take_tokens(user_id, operation, call_worst_case_tokens(request))

    async def settle_tokens(self, hold: TokenHold | None, actual: int | None) -> None:
        """Settle a token hold to the ``actual`` billed tokens (0 when refused before any provider
        saw the call, ``None`` to keep the worst case when usage is unknown). Never raises."""
        await self.limiter.settle_tokens(hold, actual)

    def reserve_in(
        self,
        request_id: str,
        user_id: str,
        operation: str,
        request: CompletionRequest,
        model: str,
        *,
        shadow: bool = False,
        input_tokens: int | None = None,
        cheaper: Sequence[str] = (),
        note: bool = True,
    ) -> InTransaction[Reservation]:
        """Step 5: the work that reserves the worst case of the call's first request, ``request``
        to ``model`` (a price key), against every applicable budget, to run inside the ledger
        intent's transaction (``Ledger.append(..., work=reserve)``), so a call is admitted and
        ledgered atomically. Further requests extend it (:meth:`extend_in`). A ``shadow`` call
        reserves against the ``shadow`` budget scope only. ``input_tokens`` is the provider's
        exact count when the byte bound did not fit (see
        :func:`~opsgate.metering.worstcase.attempt_worst_case_micro_usd`). ``cheaper`` are the
        price keys of the chain's further targets, in order (their input at the byte bound):
        where every budget without room is ``cheaper``, the first of them that fits is reserved
        instead (``Reservation.choice``). ``note`` records a refusal or a degradation in
        ``budget_outcomes`` (off for a try that another try follows).

        The work returns the :class:`Reservation`; it raises :class:`BudgetExceeded` (402) or, when
        the store fails, :class:`BudgetUnavailable` (503) after an ``enforcement_error`` event is
        published on the caller's event loop. Call from the event loop.
        """
        worst = attempt_worst_case_micro_usd(request, model, self.prices, input_tokens)
        further = attempt_worst_cases_micro_usd(request, cheaper, self.prices)
        return _Reserve(self, asyncio.get_running_loop(),
                        Hold(request_id, user_id, operation, worst, shadow), tuple(further), note)

    def extend_in(self, reservation: Reservation, amount_micro_usd: int) -> InTransaction[None]:
        """Step 7, before a further request of the call leaves: the work that holds
        ``amount_micro_usd`` more on every budget ``reservation`` holds, to run inside the ledger
        ``extend`` entry's transaction (so the extension is ledgered before the request is sent).
        Raises :class:`BudgetExceeded` (402) when one has no room, or :class:`BudgetUnavailable`
        (503, after an ``enforcement_error`` event) when the store fails. Call from the event loop."""
        loop = asyncio.get_running_loop()

        def grow(conn: Connection) -> None:
            try:
                extend(conn, self.clock, reservation, amount_micro_usd)
            except BudgetExceeded:
                raise
            except Exception as exc:
                loop.call_soon_threadsafe(self._publish, ENFORCEMENT_ERROR, reservation.operation,
                                          f"extend failed: {type(exc).__name__}",
                                          reservation.request_id)
                raise BudgetUnavailable() from exc

        return grow

    def settle_in(
        self, reservation: Reservation, actual_micro_usd: int, *, unknown_usage: bool,
        estimated: bool = False,
    ) -> InTransaction[Settlement | None]:
        """Step 8: the work that charges the call and releases the rest of its reservation, to run
        inside the ``result`` entry's transaction. It never refuses the entry: a failure is rolled
        back to its own savepoint and returns ``None`` (the reservation then expires and is charged
        its worst case); otherwise it returns the :class:`Settlement`. ``unknown_usage`` and
        ``estimated`` are :func:`~opsgate.metering.reservations.charge`'s. Call from the event loop."""
        return _Settle(self, asyncio.get_running_loop(),
                       Charge(reservation, actual_micro_usd, unknown_usage, estimated))

    async def settled(self, reservation: Reservation, settlement: Settlement | None) -> None:
        """After the result committed: publish ``overspend`` for every budget the charge took over
        its limit. Never raises."""
        if settlement is None:
            return
        for budget in settlement.over_limit:
            self._publish(OVERSPEND, reservation.operation,
                          f"the {budget.period} budget of {budget.scope} is over its limit after a "
                          f"charge of {settlement.charged_micro_usd} micro-USD", reservation.request_id)

    def expire(self) -> list[str]:
        """Charge expired reservations at their worst case (see :func:`expire_reservations`)."""
        return expire_reservations(self.engine, self.clock)

    @property
    def expiry_interval_s(self) -> float:
        """Seconds between two runs of :meth:`expire_every`: half the reservation TTL, so a
        reservation nobody settled is expired at most ``1.5 x TTL`` after it was taken."""
        return self.reservation_ttl_s / 2

    async def expire_every(self, sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        """Run :meth:`expire` (in a thread) every :attr:`expiry_interval_s` seconds until cancelled:
        the gateway's timer (started by :func:`opsgate.runtime.start_runtime`, cancelled on close),
        so a crashed call's hold is released while gateways keep running, not only when one
        restarts. No work on the request path. A failed run (database unreachable) is logged and
        the next one tries again. ``sleep`` is injectable for tests."""
        while True:
            await sleep(self.expiry_interval_s)
            try:
                await asyncio.to_thread(self.expire)
            except Exception as exc:  # the next run retries; the hold only waits longer
                log.warning("expiring budget reservations failed (%s); retried in %g s",
                            type(exc).__name__, self.expiry_interval_s)

    def _publish(self, reason: str, operation: str, detail: str, request_id: str | None) -> None:
        self.hooks.publish(EnforcementFailure(reason, operation, detail, self.clock.now(), request_id))


def require_prices(prices: PriceSource, models: Iterable[str]) -> None:
    """Refuse to start when a routed model has no price (it could be neither reserved nor
    metered). ``models`` are the keys ``prices.price_for`` takes (``"provider/model"`` for a
    :class:`~opsgate.metering.prices.PriceBook`). Raises
    :class:`~opsgate.metering.errors.PriceTableError` naming the models."""
    missing = sorted({m for m in models if not _priced(prices, m)})
    if missing:
        raise PriceTableError(f"routed model(s) without a price: {', '.join(missing)}")


def _priced(prices: PriceSource, model: str) -> bool:
    try:
        prices.price_for(model)
    except UnknownModelPrice:
        return False
    return True


def build_metering(
    settings: Settings, engine: Engine, clock: Clock, prices: PriceSource, models: Iterable[str]
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
    limiter = RateLimiter(limits, make_request_log(settings.redis_url, settings.rate_limit_key_prefix),
                          make_token_windows(settings.redis_url, settings.rate_limit_key_prefix))
    service = MeteringService(engine, clock, prices, limiter, EnforcementHooks(),
                              reservation_ttl_s=settings.budget_reservation_ttl_s)
    service.expire()
    return service


@dataclass(frozen=True, slots=True)
class _Reserve:
    """The work :meth:`MeteringService.reserve_in` returns: ``hold`` on call, and batchable (the
    ledger writer's ``many``): the intents of one ledger batch hold at once."""

    service: MeteringService
    loop: asyncio.AbstractEventLoop
    hold: Hold
    further: tuple[int, ...]
    note: bool

    def __call__(self, conn: Connection) -> Reservation:
        h, service = self.hold, self.service
        try:
            return hold(conn, service.clock, request_id=h.request_id, user_id=h.user_id,
                        operation=h.operation, worst_micro_usd=h.worst_micro_usd,
                        ttl_s=service.reservation_ttl_s, shadow=h.shadow, cheaper=self.further,
                        note=self.note)
        except BudgetExceeded:
            raise
        except Exception as exc:
            self.loop.call_soon_threadsafe(service._publish, ENFORCEMENT_ERROR, h.operation,
                                           f"reserve failed: {type(exc).__name__}", h.request_id)
            raise BudgetUnavailable() from exc

    @staticmethod
    def many(conn: Connection, works: Sequence[_Reserve]) -> list[Reservation | OpsgateError]:
        """Every work's :class:`Reservation`, or its refusal: all held at once
        (:func:`~opsgate.metering.reservations.hold_at_once`) when every budget has room for all
        of them, else each on its own, exactly as one by one. A store error in the attempt at
        once leaves the works to meet it on their own (each then refuses with 503)."""
        first = works[0].service
        if len(works) > 1 and all(w.service is first for w in works):
            held = _at_once(conn, "holding", lambda: hold_at_once(
                conn, first.clock, [w.hold for w in works], first.reservation_ttl_s))
            if held is not None:
                return list(held)
        return [_run(conn, work) for work in works]


def _at_once(conn: Connection, doing: str, attempt: Callable[[], T | None]) -> T | None:
    """``attempt()`` (a ledger batch's holds or settlements at once) in a savepoint; ``None``,
    logged, when it raises, for the caller to go one by one."""
    try:
        with savepoint(conn):
            return attempt()
    except Exception:
        log.warning("%s a ledger batch's reservations at once failed; %s them one by one",
                    doing, doing, exc_info=True)
        return None


def _run(conn: Connection, work: _Reserve) -> Reservation | OpsgateError:
    try:
        return work(conn)
    except OpsgateError as exc:
        return exc


@dataclass(frozen=True, slots=True)
class _Settle:
    """The work :meth:`MeteringService.settle_in` returns: ``charge`` on call, and batchable (the
    ledger writer's ``many``): the results of one ledger batch settle at once."""

    service: MeteringService
    loop: asyncio.AbstractEventLoop
    charge: Charge

    def __call__(self, conn: Connection) -> Settlement | None:
        c, service = self.charge, self.service

        def settle() -> Settlement:
            return charge(conn, service.clock, c.reservation, c.actual_micro_usd,
                          unknown_usage=c.unknown_usage, estimated=c.estimated)

        if not c.reservation.budgets:  # nothing was held: nothing to write
            return settle()
        try:
            with savepoint(conn):
                return settle()
        except Exception as exc:
            self.loop.call_soon_threadsafe(
                service._publish, ENFORCEMENT_ERROR, c.reservation.operation,
                f"settle failed ({type(exc).__name__}); the reservation will expire and be "
                "charged its worst case", c.reservation.request_id)
            return None

    @staticmethod
    def many(conn: Connection, works: Sequence[_Settle]) -> list[Settlement | None]:
        """Every work's :class:`Settlement` (``None`` where it failed): the charges of the calls
        that hold budgets at once (:func:`~opsgate.metering.reservations.charge_at_once`), else
        each on its own, exactly as one by one."""
        held = [w for w in works if w.charge.reservation.budgets]
        first = works[0].service
        if len(held) > 1 and all(w.service is first for w in works):
            settled = _at_once(conn, "settling",
                               lambda: charge_at_once(conn, first.clock, [w.charge for w in held]))
            if settled is not None:
                at_once = iter(settled)
                return [next(at_once) if w.charge.reservation.budgets else w(conn) for w in works]
        return [w(conn) for w in works]
