"""Fault profiles: what the sandboxes do to each request, decided deterministically.

A profile string is a comma-separated list of parts (whitespace ignored, order irrelevant):

- ``none``: answer normally.
- ``slow`` or ``slow:<n>ms`` / ``slow:<n>s``: add latency before answering (default 300 ms).
- ``flaky``: per provider, request 2, 5, 8, ... (every third, starting with the second) fails,
  alternating between a 429 (with a retry delay) and the provider's overload error (Anthropic
  529, DeepSeek 503, Gemini 503). Never two failures in a row, so one retry succeeds.
- ``outage:<provider>``: that provider always answers its overload error.
- ``ratelimit:<provider>``: that provider always answers 429 with a retry delay.
- ``status:<provider>:<code>``: that provider always answers ``code`` with its own error body
  (e.g. ``status:deepseek:402`` for insufficient balance, ``status:anthropic:500``).
- ``errors:<provider>:<pct>``: ``pct`` % (0..100) of that provider's requests answer 400 with its
  invalid-request error body (what a bad release that builds broken requests gets), spread evenly
  by a counter: request ``n`` (from 0) fails when ``(n + 1) * pct // 100 > n * pct // 100``.
- ``schema:<provider>:<pct>``: ``pct`` % (0..100) of that provider's requests get the
  ``off-schema`` answer (``{}``, a well-formed 200 that misses the requested schema; what a model
  that follows the schema badly does), spread evenly by a counter as for ``errors``.
- ``malformed``: 200 answers that cannot be used, cycling per provider through: JSON cut in half,
  JSON lacking the required fields, an empty body (for streams: a broken ``data:`` line, a stream
  cut before its final event, an empty stream). ``malformed:<provider>``: only that provider's.
- ``off-schema``: per provider, request 1, 3, 5, ... (every other, starting with the first)
  answers a well-formed 200 whose JSON object is ``{}``, which misses the requested schema (what
  makes the gateway send a schema-repair request); the next one answers normally.
- ``safety-blocked``: Anthropic ``stop_reason: "refusal"``, DeepSeek ``finish_reason:
  "content_filter"``, Gemini ``promptFeedback.blockReason: "SAFETY"`` with no candidates.
- ``policy:<provider>``: that provider refuses the content on policy grounds in its other form:
  Anthropic 400 ``invalid_request_error`` "Output blocked by content filtering policy", DeepSeek
  400 "Content Exists Risk", Gemini a 200 whose candidate has ``finishReason: "SAFETY"`` and no
  content (a blocked answer).
- ``context:<provider>:<tokens>``: that provider's context window is ``tokens``: a request whose
  prompt counts more (the sandboxes' token rule, :func:`opsgate.sandbox.synth.count_tokens`) gets
  its context-length 400: Anthropic "prompt is too long: N tokens > M maximum", DeepSeek "This
  model's maximum context length is M tokens. However, you requested ...", Gemini
  ``INVALID_ARGUMENT`` "The input token count (N) exceeds the maximum number of tokens allowed
  (M).". Checked before any other part, as the real APIs validate before serving.
- ``timeout``: the request hangs for :data:`HANG_SECONDS` (longer than any client timeout); the
  waiting handler is an ordinary cancellable ``asyncio.sleep``. ``timeout-once:<provider>``: only
  the first request to that provider hangs (a retry then succeeds).
- ``retired:<provider>:<model>``: that provider answers requests for ``model`` with its own
  "model not found" 404 (as for a retired model).
- ``substitute:<provider>:<model>``: that provider reports ``model`` as the model that served
  every request (as when a provider reroutes an alias or a retired model).
- ``count:<provider>:<code>`` / ``count:<provider>:timeout``: that provider's token-count endpoint
  (Anthropic ``count_tokens``, Gemini ``countTokens``) answers ``code`` with its own error body, or
  hangs; its other endpoints are untouched.

The token-count endpoints advance no counter (so counted parts such as ``flaky`` or ``errors``
keep their sequence on the real requests) and follow only ``slow``, ``timeout``, ``count``,
``status``, ``outage`` and ``ratelimit`` (:meth:`FaultState.decide_count`).

Where several parts apply to one request, the first of timeout, timeout-once, status, outage,
ratelimit, errors, policy, flaky, malformed, safety-blocked, off-schema, schema wins; ``slow``
latency is added in every case. Providers are ``anthropic``, ``deepseek``, ``gemini``.
"""

from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass, field
from enum import StrEnum

PROVIDERS = ("anthropic", "deepseek", "gemini")
DEFAULT_SLOW_S = 0.3
HANG_SECONDS = 3600.0
ERRORS_STATUS = 400
FLAKY_PERIOD = 3
MALFORMED_VARIANTS = 3

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s)$")


class FaultProfileError(ValueError):
    """A profile string that does not follow the grammar in the module docstring."""


class Outcome(StrEnum):
    """What a provider sandbox does with one request."""

    OK = "ok"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    STATUS = "status"
    MALFORMED = "malformed"
    SAFETY_BLOCKED = "safety_blocked"
    POLICY_REFUSED = "policy_refused"
    OFF_SCHEMA = "off_schema"
    HANG = "hang"


@dataclass(frozen=True, slots=True)
class Decision:
    """The fault decision for one request: ``delay_s`` seconds of latency, then ``outcome``.

    ``status`` is the HTTP status for :attr:`Outcome.STATUS`; ``variant`` (0..2) picks the kind of
    :attr:`Outcome.MALFORMED` body.
    """

    outcome: Outcome
    delay_s: float = 0.0
    status: int | None = None
    variant: int = 0

    async def wait(self) -> None:
        """Sleep for the latency, then (for :attr:`Outcome.HANG`) for :data:`HANG_SECONDS`.

        Raises ``asyncio.CancelledError`` when the handler is cancelled (client gone, server stop).
        """
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        if self.outcome is Outcome.HANG:
            await asyncio.sleep(HANG_SECONDS)

    def error_status(self, overload_status: int) -> int | None:
        """The HTTP error status this decision calls for (429, ``overload_status``, or the
        configured status), or ``None`` when the answer is a 200."""
        if self.outcome is Outcome.RATE_LIMITED:
            return 429
        if self.outcome is Outcome.OVERLOADED:
            return overload_status
        return self.status if self.outcome is Outcome.STATUS else None


@dataclass(frozen=True, slots=True)
class FaultProfile:
    """A parsed profile string (see the module docstring); ``text`` is the normalised string."""

    text: str = "none"
    delay_s: float = 0.0
    flaky: bool = False
    malformed: bool = False
    safety_blocked: bool = False
    off_schema: bool = False
    timeout: bool = False
    malformed_for: frozenset[str] = frozenset()
    timeout_once: frozenset[str] = frozenset()
    outage: frozenset[str] = frozenset()
    ratelimit: frozenset[str] = frozenset()
    status: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    schema: dict[str, int] = field(default_factory=dict)
    retired: frozenset[tuple[str, str]] = frozenset()
    substitute: dict[str, str] = field(default_factory=dict)
    policy: frozenset[str] = frozenset()
    context: dict[str, int] = field(default_factory=dict)
    count: dict[str, int | None] = field(default_factory=dict)

    def too_long(self, provider: str, prompt_tokens: int) -> int | None:
        """``provider``'s context window when ``prompt_tokens`` exceeds it (``context:``), else
        ``None``."""
        window = self.context.get(provider)
        return window if window is not None and prompt_tokens > window else None

    @classmethod
    def parse(cls, profile: str) -> FaultProfile:
        """Parse ``profile``; raises :class:`FaultProfileError` on an unknown part."""
        parts = [p.strip().lower() for p in profile.split(",") if p.strip()] or ["none"]
        fields: dict[str, object] = {"text": ",".join(parts)}
        outage: set[str] = set()
        ratelimit: set[str] = set()
        status: dict[str, int] = {}
        errors: dict[str, int] = {}
        schema: dict[str, int] = {}
        retired: set[tuple[str, str]] = set()
        substitute: dict[str, str] = {}
        policy: set[str] = set()
        context: dict[str, int] = {}
        count: dict[str, int | None] = {}
        malformed_for: set[str] = set()
        timeout_once: set[str] = set()
        for part in parts:
            name, _, arg = part.partition(":")
            if name == "none" and not arg:
                continue
            if name == "slow":
                fields["delay_s"] = _duration(arg) if arg else DEFAULT_SLOW_S
            elif name in ("flaky", "malformed", "timeout") and not arg:
                fields[name] = True
            elif name == "safety-blocked" and not arg:
                fields["safety_blocked"] = True
            elif name == "off-schema" and not arg:
                fields["off_schema"] = True
            elif name == "malformed":
                malformed_for.add(_provider(arg))
            elif name == "timeout-once":
                timeout_once.add(_provider(arg))
            elif name == "outage":
                outage.add(_provider(arg))
            elif name == "ratelimit":
                ratelimit.add(_provider(arg))
            elif name == "status":
                provider, code = _status(arg)
                status[provider] = code
            elif name in ("errors", "schema"):
                provider, pct = _errors(arg, name)
                (errors if name == "errors" else schema)[provider] = pct
            elif name == "retired":
                retired.add(_model(arg))
            elif name == "substitute":
                provider, model = _model(arg)
                substitute[provider] = model
            elif name == "policy":
                policy.add(_provider(arg))
            elif name == "context":
                provider, window = _context(arg)
                context[provider] = window
            elif name == "count":
                provider, count_status = _count(arg)
                count[provider] = count_status
            else:
                raise FaultProfileError(f"unknown fault profile part {part!r}")
        return cls(
            **fields,  # type: ignore[arg-type]  # set above by field name with that field's type
            outage=frozenset(outage),
            ratelimit=frozenset(ratelimit),
            status=status,
            errors=errors,
            schema=schema,
            retired=frozenset(retired),
            substitute=substitute,
            policy=frozenset(policy),
            context=context,
            count=count,
            malformed_for=frozenset(malformed_for),
            timeout_once=frozenset(timeout_once),
        )


class FaultState:
    """The active profile plus the per-provider request counters that make decisions repeatable.

    Thread-safe: :class:`opsgate.sandbox.server.SandboxThread` changes it from another thread.
    Setting a profile restarts the counters, so the sequence after ``set`` is always the same.
    """

    def __init__(self, profile: str = "none") -> None:
        self._lock = threading.Lock()
        self._profile = FaultProfile.parse(profile)
        self._counters: dict[tuple[str, str], int] = {}

    @property
    def profile(self) -> FaultProfile:
        """The active profile."""
        return self._profile

    def set(self, profile: str) -> FaultProfile:
        """Replace the active profile (raises :class:`FaultProfileError`) and reset counters."""
        parsed = FaultProfile.parse(profile)
        with self._lock:
            self._profile = parsed
            self._counters.clear()
        return parsed

    def decide(self, provider: str) -> Decision:
        """The decision for the next request to ``provider`` (advances its counters)."""
        with self._lock:
            p = self._profile
            outcome, status, variant = self._outcome(p, provider)
        return Decision(outcome=outcome, delay_s=p.delay_s, status=status, variant=variant)

    def decide_count(self, provider: str) -> Decision:
        """The decision for a token-count request to ``provider``: hang (``timeout``,
        ``count:<provider>:timeout``), the ``count`` or ``status`` code, the overload error
        (``outage``) or a 429 (``ratelimit``), else OK; ``slow`` latency in every case. Advances
        no counter."""
        p = self._profile
        outcome, status = Outcome.OK, None
        if p.timeout or (provider in p.count and p.count[provider] is None):
            outcome = Outcome.HANG
        elif provider in p.count or provider in p.status:
            outcome, status = Outcome.STATUS, p.count.get(provider) or p.status[provider]
        elif provider in p.outage:
            outcome = Outcome.OVERLOADED
        elif provider in p.ratelimit:
            outcome = Outcome.RATE_LIMITED
        return Decision(outcome=outcome, delay_s=p.delay_s, status=status)

    def _outcome(self, p: FaultProfile, provider: str) -> tuple[Outcome, int | None, int]:
        if p.timeout:
            return Outcome.HANG, None, 0
        if provider in p.timeout_once and self._next(provider, "timeout-once") == 0:
            return Outcome.HANG, None, 0
        if provider in p.status:
            return Outcome.STATUS, p.status[provider], 0
        if provider in p.outage:
            return Outcome.OVERLOADED, None, 0
        if provider in p.ratelimit:
            return Outcome.RATE_LIMITED, None, 0
        if provider in p.errors and self._spread(provider, "errors", p.errors[provider]):
            return Outcome.STATUS, ERRORS_STATUS, 0
        if provider in p.policy:
            return Outcome.POLICY_REFUSED, None, 0
        if p.flaky:
            n = self._next(provider, "flaky")
            if n % FLAKY_PERIOD == 1:
                kind = Outcome.RATE_LIMITED if (n // FLAKY_PERIOD) % 2 == 0 else Outcome.OVERLOADED
                return kind, None, 0
        if p.malformed or provider in p.malformed_for:
            return Outcome.MALFORMED, None, self._next(provider, "malformed") % MALFORMED_VARIANTS
        if p.safety_blocked:
            return Outcome.SAFETY_BLOCKED, None, 0
        if p.off_schema and self._next(provider, "off-schema") % 2 == 0:
            return Outcome.OFF_SCHEMA, None, 0
        if provider in p.schema and self._spread(provider, "schema", p.schema[provider]):
            return Outcome.OFF_SCHEMA, None, 0
        return Outcome.OK, None, 0

    def _spread(self, provider: str, key: str, pct: int) -> bool:
        """Whether request ``n`` of ``pct`` % (counted per provider and key) is hit: when
        ``(n + 1) * pct // 100 > n * pct // 100``, so hits are spread evenly."""
        n = self._next(provider, key)
        return (n + 1) * pct // 100 > n * pct // 100

    def _next(self, provider: str, key: str) -> int:
        n = self._counters.get((provider, key), 0)
        self._counters[(provider, key)] = n + 1
        return n


def _duration(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise FaultProfileError(f"bad duration {text!r}: use e.g. 50ms or 1.5s")
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "ms" else value


def _provider(name: str) -> str:
    if name not in PROVIDERS:
        raise FaultProfileError(f"unknown provider {name!r}: expected one of {PROVIDERS}")
    return name


def _status(arg: str) -> tuple[str, int]:
    provider, _, code = arg.partition(":")
    if not code.isdigit() or not 400 <= int(code) <= 599:
        raise FaultProfileError(f"status needs <provider>:<4xx|5xx>, got {arg!r}")
    return _provider(provider), int(code)


def _model(arg: str) -> tuple[str, str]:
    provider, _, model = arg.partition(":")
    if not model:
        raise FaultProfileError(f"expected <provider>:<model>, got {arg!r}")
    return _provider(provider), model


def _context(arg: str) -> tuple[str, int]:
    provider, _, tokens = arg.partition(":")
    if not tokens.isdigit() or int(tokens) < 1:
        raise FaultProfileError(f"context needs <provider>:<tokens>, got {arg!r}")
    return _provider(provider), int(tokens)


def _count(arg: str) -> tuple[str, int | None]:
    """``<provider>:timeout`` (``None``: hang) or ``<provider>:<4xx|5xx>``."""
    provider, _, kind = arg.partition(":")
    if kind == "timeout":
        return _provider(provider), None
    if not kind.isdigit() or not 400 <= int(kind) <= 599:
        raise FaultProfileError(f"count needs <provider>:<4xx|5xx|timeout>, got {arg!r}")
    return _provider(provider), int(kind)


def _errors(arg: str, name: str) -> tuple[str, int]:
    provider, _, pct = arg.partition(":")
    if not pct.isdigit() or not 0 <= int(pct) <= 100:
        raise FaultProfileError(f"{name} needs <provider>:<0..100>, got {arg!r}")
    return _provider(provider), int(pct)
