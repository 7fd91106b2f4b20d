"""The router: the gateway's only retry loop.

For each target of a :class:`~opsgate.routing.policy.RoutePolicy` chain, in order:

1. skip it when its provider has no adapter, one of its two circuit breakers refuses (the
   provider's, or the target's own (provider, model) breaker), or the prompt may not fit
   its context window while another target has room (:mod:`opsgate.routing.windows`) (recorded);
2. call it, up to ``max_attempts_per_target`` times, each attempt limited to ``timeout_s`` (and
   to what is left of ``total_timeout_s``);
   Before each call the policy's ``admit`` hook (if any) runs with the target: the pipeline
   extends the call's budget reservation there, and a refusal it raises stops the chain as is
   (with ``error.attempts`` set), before that request leaves;
3. after an error with ``retryable`` set (429 with a usable wait, 529, 5xx, 408, timeouts,
   connection failures) wait :func:`~opsgate.routing.retry.retry_wait_s` and retry, except after
   a *late* failure while a later target of the chain can still be called (its provider
   configured, its breakers admitting, the prompt fitting): the router moves on at once, because
   retrying in place would spend on a provider that is not answering in time the deadline the
   fallbacks need. A failure is late when it says the provider did not answer in time
   (:attr:`~opsgate.providers.errors.ProviderError.timed_out`: our attempt timeout, HTTP 408,
   HTTP 504 such as Anthropic's ``timeout_error`` or Gemini's ``DEADLINE_EXCEEDED``), or when its
   attempt took at least :data:`SLOW_FAILURE_SHARE` of the attempt's time limit (a 529 or 500
   after a long wait: a retry would likely wait as long again). The last callable target still
   retries its late failures within the deadline. A failure after the provider sent its 2xx
   status (a 200 whose body was cut: :class:`~opsgate.providers.errors.ConnectionFailed` with
   ``http_status`` 200) is late too: the provider answered and may bill it, so asking the same
   target again risks a second bill for one answer, while a refused connection cannot have been
   billed and keeps its retries; a wait longer
   than ``max_retry_wait_s`` or than the time left is not taken, the router moves on instead, and
   a provider that asked for more than ``max_retry_wait_s`` is cooled down for the time it asked
   for, at most ``max_cooldown_s`` (:meth:`~opsgate.routing.breaker.CircuitBreaker.cool_down`), so
   later calls skip it until a half-open trial;
4. after any other error (400/401/402/403/422, spend-cap 429, ...) or exhausted retries, fall
   back to the next target only if ``error.fallback`` is set (auth, billing, spend cap, outages,
   a prompt beyond the target's context window), or the error is :class:`ContentFiltered` and the
   policy allows it. :class:`InvalidRequest` never falls back; a :class:`ContentFiltered` or
   :class:`ContextLengthExceeded` is never retried on the same target;
5. when the caller gave a :class:`Cancel` (the HTTP layer does; ``opsgate run`` has none), the
   router asks it before every request that follows one already sent in this routing call (a
   retry or a fallback), and a retry's wait ends when the caller goes away: once it has gone,
   :class:`~opsgate.routing.errors.ClientClosed` is raised with ``attempts`` set and nothing more
   is sent (a request in flight is let finish; what it may have billed is charged as usual).
   The first request is not preceded by a check, so a call that succeeds at once pays nothing
   for it.

A request-side error that must not fall back is re-raised as is, with ``error.attempts`` set.
When the chain is exhausted, :class:`~opsgate.routing.errors.InputTooLarge` (413) is raised if
every target refused the prompt for its length, else
:class:`~opsgate.routing.errors.AllProvidersFailed` (503), or its
:class:`~opsgate.routing.errors.NoUsableAnswer` (502 ``provider_bad_response``) when a target
answered but its answer could not be used (empty, malformed, cut off). Every failed provider call is logged (one
WARNING line through the sanitizer: provider, model, status, error kind, provider request id;
never the provider's body).
Every outcome is reported to the target's
:class:`~opsgate.routing.breaker.TargetBreakers`: a failure counts against the provider's breaker
or the (provider, model) breaker by its :class:`~opsgate.providers.errors.Scope`, so one model's
overload, 5xx streak or rate limit leaves the provider's other models callable, while a
connection, credential or account failure skips every model of the provider. Model breakers are
keyed by the configured targets (routes, variants, probes): never by a model a provider names.
A provider the alerting system :meth:`~Router.demote` (after a long outage) is tried after every other
target until :meth:`~Router.restore`; :meth:`~Router.probe` checks whether it recovered.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from opsgate.clock import Clock
from opsgate.errors import OpsgateError
from opsgate.providers.base import Completion, CompletionRequest, Provider, TokenCounter, Usage
from opsgate.providers.errors import (
    ContentFiltered,
    ContextLengthExceeded,
    ProviderError,
    ProviderTimeout,
)
from opsgate.routing.breaker import (
    DEFAULT_MAX_WAIT_S,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    TargetBreakers,
)
from opsgate.routing.errors import (
    CircuitOpen,
    ClientClosed,
    ContextWindowTooSmall,
    DeadlineExceeded,
    InputTooLarge,
    ProviderNotConfigured,
    chain_failed,
)
from opsgate.routing.policy import RoutePolicy, Target
from opsgate.routing.retry import retry_wait_s
from opsgate.routing.served import checked_model_id, checked_served_model
from opsgate.routing.windows import ContextWindows
from opsgate.security.sanitizer import sanitize
from opsgate.tracing import provider_call

OK = "ok"

SLOW_FAILURE_SHARE = 0.5
"""A failed attempt that took at least this share of its time limit (``timeout_s``, or the time
left of ``total_timeout_s`` when less) is late: it is not retried in place while a later target
can be called. Half, because a retry likely takes as long again, and two such attempts use up
the attempt's whole limit, which a hang (a timeout) is not granted either."""

log = logging.getLogger("opsgate.routing")

Admit = Callable[[Target, CompletionRequest, "Sequence[Attempt]"], Awaitable[None]]
"""Runs before each request leaves, with the target, the request and this routing call's attempts
so far; raises an :class:`OpsgateError` to stop the call there."""


class Cancel(Protocol):
    """Tells the router that the caller of a routed call went away (the HTTP client closed its
    connection), so no further provider request should start (module docstring, step 5).

    ``gone()`` answers at once (no waiting): ``True`` once the caller has gone, and from then on.
    ``wait_gone()`` returns when the caller goes away (possibly never; the router cancels it when
    its wait is over). The HTTP implementation is :class:`opsgate.app.ClientDisconnect`
    (Starlette's ``Request.is_disconnected``, the ASGI ``http.disconnect`` message)."""

    async def gone(self) -> bool:
        """Whether the caller has gone away; answers without waiting."""
        ...

    async def wait_gone(self) -> None:
        """Return when the caller goes away."""
        ...


CALLER: contextvars.ContextVar[Cancel | None] = contextvars.ContextVar("opsgate_routing_caller", default=None)
"""The :class:`Cancel` of the call being routed in this task, used by :meth:`Router.complete` when
it is given none: the pipeline sets it around step 7 (``Call.cancel``), so the router's call
signature stays ``complete(request, policy, admit)`` for its callers and wrappers."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try (or skip) of one target.

    ``outcome_kind`` is ``ok`` or an error's ``kind`` (``rate_limited``, ``overloaded``, ...,
    ``circuit_open``, ``not_configured``, ``deadline_exceeded``, ``context_window``);
    ``http_status`` the provider's status (200 on success, None without an HTTP answer);
    ``latency_ms`` the call's duration on the router's clock; ``waited_s`` the wait taken before
    this attempt, in seconds. ``sent`` is True when the request went to the provider (False for
    skips); ``usage`` what the provider reported for it (the completion's, or an unusable
    answer's), ``None`` when it reported none; ``served_model`` the model the provider said
    answered (a success's, or an unusable 200's that named one: a refusal, an empty or
    malformed answer, which the metering prices at that model). These three are details of the attempt and take no part in
    comparing attempts."""

    provider: str
    model: str
    outcome_kind: str
    http_status: int | None
    latency_ms: float
    waited_s: float
    sent: bool = field(default=False, compare=False)
    usage: Usage | None = field(default=None, compare=False)
    served_model: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Routed:
    """A successful routed call: the provider's completion and every attempt that led to it."""

    completion: Completion
    attempts: list[Attempt] = field(default_factory=list)


@dataclass(slots=True)
class _Call:
    """The state of one :meth:`Router.complete` call."""

    request: CompletionRequest
    policy: RoutePolicy
    deadline: float
    admit: Admit | None = None
    cancel: Cancel | None = None
    attempts: list[Attempt] = field(default_factory=list)
    too_small: set[Target] = field(default_factory=set)


class Router:
    """Routes requests over ``providers`` (by name) with retries, breakers and fallback.

    ``clock`` times attempts, deadlines and breakers; ``sleep`` waits between retries (inject a
    fake in tests); ``rand`` drives backoff jitter; ``failure_threshold``, ``cooldown_s`` and
    ``max_cooldown_s`` configure each provider's and each model's breaker (settings
    ``breaker_failure_threshold``, ``breaker_cooldown_s`` and ``breaker_max_cooldown_s``, the cap
    on a provider's asked-for wait); ``targets`` are the configured (provider, model) targets
    whose breakers exist from the start, so a provider's availability (:meth:`snapshot`) counts
    its models not yet called (a target first met in a policy gets its breaker then);
    ``observer`` (optional) sees every :class:`Attempt` as it is recorded (the Prometheus
    provider counters); ``windows`` (optional) skips targets whose context window the prompt may
    not fit.
    """

    def __init__(
        self,
        providers: Mapping[str, Provider],
        clock: Clock,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        *,
        failure_threshold: int = 5,
        cooldown_s: float = 30.0,
        max_cooldown_s: float = DEFAULT_MAX_WAIT_S,
        rand: Callable[[], float] = random.random,
        observer: Callable[[Attempt], None] | None = None,
        windows: ContextWindows | None = None,
        targets: Iterable[Target] = (),
    ) -> None:
        self._providers = dict(providers)
        # isinstance against the runtime-checkable TokenCounter walks the protocol's members
        # (~0.1 ms on Python 3.11) and the budget step asks on every call: decided once here.
        self._counters = {name: p for name, p in self._providers.items() if isinstance(p, TokenCounter)}
        self._observer = observer
        self._windows = windows
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self._demoted: set[str] = set()
        self._new_breaker = functools.partial(
            CircuitBreaker, clock=clock, failure_threshold=failure_threshold, cooldown_s=cooldown_s,
            max_wait_s=max_cooldown_s,
        )
        self._breakers = {name: self._new_breaker(name) for name in self._providers}
        self._model_breakers: dict[Target, CircuitBreaker] = {}
        for target in targets:
            if target.provider in self._providers:
                self.breaker(target.provider, target.model)

    def breaker(self, provider: str, model: str | None = None) -> CircuitBreaker:
        """The circuit breaker of ``provider``, or of its configured ``model`` (created on first
        use); ``KeyError`` if the provider is not configured."""
        own = self._breakers[provider]
        if model is None:
            return own
        target = Target(provider, model)
        found = self._model_breakers.get(target)
        if found is None:
            found = self._model_breakers[target] = self._new_breaker(provider, model=model)
        return found

    def _target_breakers(self, target: Target) -> TargetBreakers:
        """The provider's and the target's breakers (``KeyError`` for an unconfigured provider)."""
        return TargetBreakers(self._breakers[target.provider], self.breaker(target.provider, target.model))

    def counter(self, provider: str) -> TokenCounter | None:
        """``provider``'s adapter when its API counts input tokens (Anthropic, Gemini), else
        ``None`` (OpenAI-compatible endpoints such as DeepSeek, an unconfigured provider)."""
        return self._counters.get(provider)

    def snapshot(self) -> list[BreakerSnapshot]:
        """Each provider's availability as one breaker state, for /metrics
        (``opsgate_breaker_state``), the published provider status and the dashboard: its own
        breaker's snapshot, unless that is closed while every model breaker it has refuses
        (no configured model of it can be called): then the snapshot of the model breaker
        that admits a call soonest (half-open first, else the shortest ``open_for_s``), with
        ``model`` ``None``."""
        found = []
        for name, breaker in self._breakers.items():
            own = breaker.snapshot()
            models = [b.snapshot() for t, b in self._model_breakers.items() if t.provider == name]
            if own.state is BreakerState.CLOSED and models and all(
                m.state is not BreakerState.CLOSED for m in models
            ):
                soonest = min(models, key=lambda m: (m.state is BreakerState.OPEN, m.open_for_s))
                own = replace(soonest, model=None)
            found.append(own)
        return found

    def model_snapshot(self) -> list[BreakerSnapshot]:
        """Every (provider, model) breaker's state, ordered by provider and model, for /metrics
        (``opsgate_model_breaker_state``)."""
        ordered = sorted(self._model_breakers, key=lambda t: (t.provider, t.model))
        return [self._model_breakers[t].snapshot() for t in ordered]

    @property
    def demoted(self) -> frozenset[str]:
        """Providers moved to the end of every chain (see :meth:`demote`)."""
        return frozenset(self._demoted)

    def demote(self, provider: str) -> None:
        """Move ``provider``'s targets behind every other target of each chain (order among the
        others kept) until :meth:`restore`; the alerting system does this after a long outage."""
        self._demoted.add(provider)

    def restore(self, provider: str) -> None:
        """Undo :meth:`demote` for ``provider`` (no-op when it is not demoted)."""
        self._demoted.discard(provider)

    def chain(self, policy: RoutePolicy) -> tuple[Target, ...]:
        """``policy.chain`` with demoted providers' targets moved to the end, in their order."""
        if not self._demoted:  # asked twice per call (reserve, route): no sort while none is demoted
            return tuple(policy.chain)
        return tuple(sorted(policy.chain, key=lambda t: t.provider in self._demoted))

    async def probe(self, provider: str, model: str, request: CompletionRequest, timeout_s: float) -> bool:
        """One health-check call to ``model`` of ``provider`` if its breakers admit it (a
        half-open trial); the outcome is reported to them as a routed call's is. True when the
        provider answered. Used to notice that a demoted provider recovered, since a demoted
        provider sees little traffic."""
        if provider not in self._breakers:
            return False
        breaker = self._target_breakers(Target(provider, model))
        if not breaker.allow():
            return False
        try:
            async with asyncio.timeout(timeout_s):
                await self._providers[provider].complete(request, model, timeout_s)
        except ProviderError as exc:
            breaker.record_failure(exc)
            return False
        except TimeoutError:
            breaker.record_failure(ProviderTimeout(provider, f"no answer within {timeout_s:g} s"))
            return False
        except BaseException:
            breaker.record_neutral()
            raise
        breaker.record_success()
        return True

    async def complete(
        self, request: CompletionRequest, policy: RoutePolicy, admit: Admit | None = None,
        cancel: Cancel | None = None,
    ) -> Routed:
        """Serve ``request`` along ``policy.chain``; see the module docstring for the rules.
        ``admit(target, request, attempts)`` runs before every request that leaves (see step 2);
        ``cancel`` (optional; else :data:`CALLER`'s) says when the caller went away (step 5).

        Returns :class:`Routed`. Raises :class:`ContentFiltered` or :class:`InvalidRequest` (with
        ``.attempts``) when they may not fall back, :class:`InputTooLarge` when every target
        refused the prompt's length, the :class:`OpsgateError` ``admit`` raised (with
        ``.attempts``), :class:`ClientClosed` (with ``.attempts``) when ``cancel`` said the caller
        went away before a further request, else :class:`AllProvidersFailed` (:class:`NoUsableAnswer`,
        502, when a target answered with an answer that could not be used; see :func:`chain_failed`).
        """
        total = policy.total_timeout_s
        deadline = self._clock.monotonic() + total if total is not None else float("inf")
        chain = self.chain(policy)
        call = _Call(request, policy, deadline, admit, cancel if cancel is not None else CALLER.get())
        if self._windows is not None:
            call.too_small = self._windows.too_small(request, chain)
        failures: list[ProviderError] = []
        for position, target in enumerate(chain):
            try:
                result = await self._try_target(call, target, chain[position + 1:])
            except OpsgateError as refused:  # from admit, or ClientClosed: nothing more is sent
                refused.attempts = call.attempts  # type: ignore[attr-defined]  # read back by the pipeline's getattr
                raise
            if isinstance(result, Completion):
                return Routed(result, call.attempts)
            failures.append(result)
            if isinstance(result, DeadlineExceeded):
                break
            if not _falls_back(result, policy):
                result.attempts = call.attempts  # type: ignore[attr-defined]  # read back by the pipeline's getattr
                raise result
        last_error = failures[-1] if failures else None
        if failures and all(isinstance(f, ContextLengthExceeded) for f in failures):
            raise InputTooLarge(call.attempts, last_error) from last_error
        raise chain_failed(call.attempts, failures) from last_error

    async def _try_target(
        self, call: _Call, target: Target, rest: Sequence[Target]
    ) -> Completion | ProviderError:
        """Up to ``max_attempts_per_target`` attempts; the completion or the error to act on.
        ``rest`` are the chain's targets after this one."""
        provider = self._providers.get(target.provider)
        if provider is None:
            return self._skip(call, target, ProviderNotConfigured(target.provider))
        if target in call.too_small:
            return self._skip(call, target, ContextWindowTooSmall(
                target.provider, "the prompt may not fit the model's context window"))
        breaker = self._target_breakers(target)
        waited = 0.0
        for failures in range(1, call.policy.max_attempts_per_target + 1):
            remaining = call.deadline - self._clock.monotonic()
            if remaining <= 0:
                return self._skip(call, target, DeadlineExceeded(target.provider))
            if (call.cancel is not None and call.attempts and any(a.sent for a in call.attempts)
                    and await call.cancel.gone()):
                raise ClientClosed(call.attempts)
            if not breaker.allow():
                return self._skip(call, target, CircuitOpen(target.provider))
            result = await self._attempt(call, target, provider, breaker, remaining, waited)
            if isinstance(result, Completion):
                return result
            if result.retry_after is not None and result.retry_after > call.policy.max_retry_wait_s:
                breaker.cool_down(result, result.retry_after)
            if failures == call.policy.max_attempts_per_target:
                return result
            if _late(result, call.attempts[-1], min(call.policy.timeout_s, remaining)) and any(
                self._callable(call, t) for t in rest
            ):
                return result
            wait = retry_wait_s(result, failures, call.policy.max_retry_wait_s, self._rand)
            if wait is None or wait >= call.deadline - self._clock.monotonic():
                return result
            await self._wait(call, wait)
            waited = wait
        raise AssertionError("unreachable: the loop returns on its last attempt")

    async def _wait(self, call: _Call, wait_s: float) -> None:
        """Sleep ``wait_s`` seconds before a retry; with a :class:`Cancel`, stop sooner when the
        caller goes away (the next attempt's check then raises :class:`ClientClosed`)."""
        if call.cancel is None:
            await self._sleep(wait_s)
            return
        if await call.cancel.gone():
            return
        sleeping = asyncio.ensure_future(self._sleep(wait_s))
        watching = asyncio.ensure_future(call.cancel.wait_gone())
        try:
            await asyncio.wait((sleeping, watching), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            watching.cancel()

    async def _attempt(
        self,
        call: _Call,
        target: Target,
        provider: Provider,
        breaker: TargetBreakers,
        remaining: float,
        waited: float,
    ) -> Completion | ProviderError:
        """One call to ``provider``, reported to the target's breakers and recorded in
        ``call.attempts``."""
        timeout = min(call.policy.timeout_s, remaining)
        if call.admit is not None:
            try:
                await call.admit(target, call.request, call.attempts)
            except BaseException:
                breaker.record_neutral()
                raise
        started = self._clock.monotonic()
        try:
            async with asyncio.timeout(timeout):
                completion = await provider_call(target.provider, target.model, call.request,
                                                 provider.complete(call.request, target.model, timeout))
        except ProviderError as exc:
            error: ProviderError = exc
        except TimeoutError:
            error = ProviderTimeout(target.provider, f"no answer within {timeout:g} s")
        except BaseException:
            breaker.record_neutral()
            raise
        else:
            breaker.record_success()
            completion = checked_served_model(completion)
            self._record(call, target, OK, 200, started, waited,
                         sent=True, usage=completion.usage, served_model=completion.served_model)
            return completion
        breaker.record_failure(error)
        self._record(call, target, error.kind, error.http_status, started, waited, sent=True,
                     usage=error.usage,
                     served_model=checked_model_id(target.provider, target.model, error.served_model))
        log_provider_error(target, error)
        return error

    def _callable(self, call: _Call, target: Target) -> bool:
        """Whether ``target`` would be called now rather than skipped: its provider has an
        adapter, the prompt may fit its window, and its breakers admit a call (asked without
        taking a half-open trial slot)."""
        return (target.provider in self._breakers and target not in call.too_small
                and self._target_breakers(target).would_allow())

    def _skip(self, call: _Call, target: Target, error: ProviderError) -> ProviderError:
        self._record(call, target, error.kind, None, self._clock.monotonic(), 0.0, sent=False)
        return error

    def _record(
        self,
        call: _Call,
        target: Target,
        kind: str,
        status: int | None,
        started: float,
        waited: float,
        *,
        sent: bool,
        usage: Usage | None = None,
        served_model: str | None = None,
    ) -> None:
        latency_ms = (self._clock.monotonic() - started) * 1000
        attempt = Attempt(target.provider, target.model, kind, status, latency_ms, waited,
                          sent, usage, served_model)
        call.attempts.append(attempt)
        if self._observer is not None:
            self._observer(attempt)


def log_provider_error(target: Target, error: ProviderError) -> None:
    """Log one failed provider call as a WARNING of ``opsgate.routing``, through the sanitizer:
    ``provider error: provider=deepseek model=deepseek-v4.1-flash status=400
    error=content_filtered request_id=ds-1``. ``status`` is the provider's HTTP status (``none``
    for transport failures and timeouts), ``error`` the error's kind; the provider's body is never
    read here (``error.detail`` holds at most its error type)."""
    line = (
        f"provider error: provider={target.provider} model={target.model} "
        f"status={error.http_status or 'none'} error={error.kind} "
        f"request_id={error.provider_request_id or 'none'}"
    )
    log.warning(sanitize(line))


def _late(error: ProviderError, attempt: Attempt, limit_s: float) -> bool:
    """Whether ``error`` (recorded as ``attempt``, whose time limit was ``limit_s`` seconds) says
    the provider is not answering in time (see the module docstring, step 3)."""
    return (error.timed_out or _answered(error)
            or attempt.latency_ms >= SLOW_FAILURE_SHARE * limit_s * 1000)


def _answered(error: ProviderError) -> bool:
    """Whether ``error`` came after the provider sent a 2xx status (RFC 9110 §15.3): the request
    was accepted and answered, so the provider may bill it (a body cut after the headers). Such a
    failure is late (module docstring, step 3): the same target is not asked again while a later
    target can be called."""
    status = error.http_status
    return status is not None and 200 <= status < 300


def _falls_back(error: ProviderError, policy: RoutePolicy) -> bool:
    """Whether the next target may be tried after ``error``."""
    if isinstance(error, ContentFiltered):
        return policy.fallback_on_content_filter
    return error.fallback
