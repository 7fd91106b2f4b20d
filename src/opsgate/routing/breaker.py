"""Circuit breakers (closed -> open -> half-open -> closed), on an injected clock: one per provider
and one per (provider, model) target.

- **closed**: calls pass. ``failure_threshold`` consecutive provider faults open the circuit.
- **open**: calls are refused until ``open_until``: the later of ``cooldown_s`` after opening and
  the end of the longest wait a provider asked for (``retry_after``) during the failure streak,
  that wait capped at ``max_wait_s``.
- **half-open**: exactly one trial call at a time is admitted; concurrent callers are refused,
  not queued. Success closes the circuit; a provider fault re-opens it.

A provider that asks for a longer wait than a route would take (a Retry-After beyond the route's
``max_retry_wait_s``) is cooled down for that long (:meth:`CircuitBreaker.cool_down`): open until
then, half-open after, as after the breaker's own cooldown.

Every wait a provider asks for (``retry-after``, ``retry-after-ms``, Anthropic's
``anthropic-ratelimit-*-reset``, Gemini's ``RetryInfo``: the adapters' ``retry_after``) is capped
at ``max_wait_s`` (setting ``breaker_max_cooldown_s``, default 300 s) before it holds the circuit
open: a quota reset days or months ahead is no health signal, and the half-open trial after the
cap finds out whether the provider serves again (if not, its answer opens the circuit again).

A *fault* is a :class:`~opsgate.providers.errors.ProviderError` whose ``scope`` is not
:attr:`~opsgate.providers.errors.Scope.REQUEST`: :class:`InvalidRequest`, :class:`ContentFiltered`,
:class:`ContextLengthExceeded` and :class:`ModelUnavailable` (a retired model, while the provider
serves others) say something about the request, not about the provider's health: they neither
count as failures nor as successes.

A call to one target passes two breakers (:class:`TargetBreakers`): its provider's and its
model's. A failure counts against the breaker its ``scope`` names (a 529, 5xx, 429 or timeout
against the model's, so the provider's other models stay callable; a connection, credential,
billing or account spend-cap failure against the provider's, so every model of it is skipped),
and is neutral for the other; a success closes both; a call is skipped when either refuses.

Concurrency: meant for one asyncio event loop. No method awaits, so each runs atomically with
respect to other tasks; it is not safe to share across OS threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from opsgate.clock import Clock
from opsgate.providers.errors import ProviderError, Scope


DEFAULT_MAX_WAIT_S = 300.0
"""The longest a provider's asked-for wait holds a circuit open (setting
``breaker_max_cooldown_s``)."""


class BreakerState(StrEnum):
    """The three states of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A breaker's state for /metrics and logs. ``open_for_s`` is how long it stays open (0 when
    not open); ``consecutive_failures`` the current streak; ``model`` is ``None`` for a
    provider's breaker, else the configured model of a (provider, model) breaker."""

    provider: str
    state: BreakerState
    consecutive_failures: int
    open_for_s: float
    trial_in_flight: bool
    model: str | None = None


def is_fault(error: ProviderError) -> bool:
    """Whether ``error`` says the provider or its model is unhealthy (see the module docstring)."""
    return error.scope is not Scope.REQUEST


class CircuitBreaker:
    """The breaker of one provider, or of one model of it when ``model`` is given (a configured
    model id, never one read from a provider's answer). ``cooldown_s``, ``failure_threshold``
    and ``max_wait_s`` come from settings (``breaker_cooldown_s``, ``breaker_failure_threshold``,
    ``breaker_max_cooldown_s``); times are ``clock.monotonic()`` seconds. ``ValueError`` for a
    threshold below 1 or a negative time.

    Protocol: call :meth:`allow` before a call; if it returned ``True``, report the call's end
    with exactly one of :meth:`record_success`, :meth:`record_failure` or :meth:`record_neutral`
    (also when the call was cancelled), so a half-open trial slot is always released.
    """

    def __init__(
        self,
        provider: str,
        clock: Clock,
        *,
        model: str | None = None,
        failure_threshold: int = 5,
        cooldown_s: float = 30.0,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
    ) -> None:
        if failure_threshold < 1 or cooldown_s < 0 or max_wait_s < 0:
            raise ValueError("failure_threshold must be >= 1, cooldown_s and max_wait_s >= 0")
        self.provider = provider
        self.model = model
        self._clock = clock
        self._threshold = failure_threshold
        self._cooldown_s = cooldown_s
        self._max_wait_s = max_wait_s
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._wait_until = float("-inf")  # end of the longest retry_after seen in this streak
        self._open_until = float("-inf")
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose time is up reads as half-open."""
        if self._state is BreakerState.OPEN and self._clock.monotonic() >= self._open_until:
            self._state = BreakerState.HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """Whether a call may go to the provider now. In half-open, admits one trial at a time
        (the caller then holds the trial slot)."""
        if not self.would_allow():
            return False
        if self._state is BreakerState.HALF_OPEN:
            self._trial_in_flight = True
        return True

    def would_allow(self) -> bool:
        """Whether :meth:`allow` would admit a call now, without taking a half-open trial slot."""
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self._trial_in_flight
        )

    def record_success(self) -> None:
        """The call answered: close the circuit and forget the failure streak."""
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._wait_until = float("-inf")
        self._trial_in_flight = False

    def record_failure(self, error: ProviderError) -> None:
        """The call failed with ``error``; faults count towards opening the circuit."""
        if not is_fault(error):
            self.record_neutral()
            return
        now = self._clock.monotonic()
        if error.retry_after is not None:
            self._wait_until = max(self._wait_until, now + self._capped(error.retry_after))
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            self._open(now)
        self._trial_in_flight = False

    def cool_down(self, seconds: float) -> None:
        """Refuse calls for ``seconds`` from now, at most ``max_wait_s`` (the wait the provider
        asked for, when a route would not take it): the circuit opens until then, or stays open
        longer if it already was; then it half-opens as after :attr:`cooldown_s`. The failure
        streak is unchanged."""
        until = self._clock.monotonic() + self._capped(seconds)
        if self.state is BreakerState.OPEN and self._open_until >= until:
            return
        self._state = BreakerState.OPEN
        self._open_until = until
        self._trial_in_flight = False

    def record_neutral(self) -> None:
        """The call ended without telling us about the provider's health (a request-side error,
        or cancellation): release a half-open trial slot, change nothing else."""
        self._trial_in_flight = False

    def snapshot(self) -> BreakerSnapshot:
        """The breaker's state now (see :class:`BreakerSnapshot`)."""
        state = self.state
        open_for = self._open_until - self._clock.monotonic() if state is BreakerState.OPEN else 0
        return BreakerSnapshot(
            self.provider, state, self._failures, max(0.0, open_for), self._trial_in_flight, self.model
        )

    def _capped(self, seconds: float) -> float:
        """A provider's asked-for wait, in seconds, within ``[0, max_wait_s]``."""
        return min(max(seconds, 0.0), self._max_wait_s)

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._open_until = max(now + self._cooldown_s, self._wait_until)


@dataclass(frozen=True, slots=True)
class TargetBreakers:
    """The two breakers a call to one (provider, model) target passes, with the protocol of
    :class:`CircuitBreaker`: :meth:`allow` before the call, then exactly one of the ``record_*``
    methods. Each outcome goes to the breaker of its scope (see the module docstring)."""

    provider: CircuitBreaker
    model: CircuitBreaker

    def would_allow(self) -> bool:
        """Whether both breakers would admit a call now (no trial slot taken)."""
        return self.provider.would_allow() and self.model.would_allow()

    def allow(self) -> bool:
        """Whether a call may go now; when both admit it, each half-open one's trial slot is
        taken. Neither slot is taken when one refuses."""
        if not self.would_allow():
            return False
        self.provider.allow()
        self.model.allow()
        return True

    def record_success(self) -> None:
        """The target answered: both circuits close."""
        self.provider.record_success()
        self.model.record_success()

    def record_failure(self, error: ProviderError) -> None:
        """``error`` counts against the breaker of its scope; the other only releases its slot."""
        counted, other = self._by_scope(error)
        counted.record_failure(error)
        other.record_neutral()

    def record_neutral(self) -> None:
        """The call told nothing about health (cancelled, refused before it left)."""
        self.provider.record_neutral()
        self.model.record_neutral()

    def cool_down(self, error: ProviderError, seconds: float) -> None:
        """:meth:`CircuitBreaker.cool_down` on the breaker of ``error``'s scope (a 429's wait
        holds only its model back; a request-scoped error cools nothing down)."""
        if is_fault(error):
            self._by_scope(error)[0].cool_down(seconds)

    def _by_scope(self, error: ProviderError) -> tuple[CircuitBreaker, CircuitBreaker]:
        if error.scope is Scope.PROVIDER:
            return self.provider, self.model
        return self.model, self.provider
