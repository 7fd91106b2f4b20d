"""The effective routing configuration: every operation's route with its key sources and prices,
the problems that refuse start-up, and the digest written to the ledger.

Used by the runtime at start-up (:func:`checked_routes`), by ``opsgate config check`` and by the
readiness audit (:func:`effective_routes`, :func:`config_problems`). Prices come in through
:class:`PriceLookup` (a :class:`opsgate.metering.prices.PriceBook`): routing and metering are
independent layers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

import orjson

from opsgate.config import Settings, config_path
from opsgate.routing.policy import (
    OPERATION_IDS,
    RouteConfigError,
    RoutePolicy,
    Target,
    policies_for,
    route_problems,
)

class UnitPrice(Protocol):
    """USD per million tokens of input and output."""

    @property
    def input(self) -> Decimal: ...

    @property
    def output(self) -> Decimal: ...


class Priced(Protocol):
    """A price with its ``source`` and ``version`` (a ``ResolvedPrice``)."""

    @property
    def price(self) -> UnitPrice: ...

    @property
    def source(self) -> str: ...

    @property
    def version(self) -> str: ...


class PriceLookup(Protocol):
    """What the routing check needs of the price book: the price of ``provider``/``model`` at
    ``at`` (tz-aware UTC), or ``None`` when nothing prices it."""

    def lookup(self, provider: str, model: str, at: datetime, input_tokens: int = 0) -> Priced | None: ...


_BUILTIN_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "deepseek": "DEEPSEEK_API_KEY",
                    "gemini": "GEMINI_API_KEY"}


@dataclass(frozen=True, slots=True)
class TargetView:
    """One target of an effective route: ``key_source`` (``"env ANTHROPIC_API_KEY"``, ``"none"``
    or ``"sandbox"``), ``key_set``, and its price now (``None`` when it has none)."""

    target: Target
    key_source: str
    key_set: bool
    price: Priced | None

    @property
    def name(self) -> str:
        """``provider/model``."""
        return f"{self.target.provider}/{self.target.model}"


@dataclass(frozen=True, slots=True)
class RouteView:
    """One operation's effective route: the ``route`` table it comes from (the operation's own
    or ``default``), its policy and its targets."""

    operation: str
    route: str
    policy: RoutePolicy
    targets: tuple[TargetView, ...]


def checked_routes(settings: Settings, prices: PriceLookup, at: datetime) -> dict[str, RoutePolicy]:
    """The policies of ``settings``, or :class:`RouteConfigError` listing every problem that makes
    a call unroutable or unmeterable at ``at`` (unknown provider, missing price). A missing key
    does not refuse start-up: the router falls back past it."""
    problems = config_problems(settings, prices, at, check_keys=False)
    if problems:
        raise RouteConfigError(problems)
    return policies_for(settings)


def config_problems(
    settings: Settings, book: PriceLookup, at: datetime, *, check_keys: bool = True
) -> list[str]:
    """One line per problem: routes naming an unknown operation or provider, targets and
    ``may_serve`` models (the budget reservation covers their prices) without a price at ``at``
    and, with ``check_keys``, targets whose key is not set (never in sandbox)."""
    problems = route_problems(settings)
    if problems:
        return problems
    problems = reservation_ttl_problems(settings)
    seen: set[str] = set()
    for view in effective_routes(settings, book, at):
        for t in view.targets:
            where = f"route {view.route!r}, target {t.name!r}"
            if t.price is None and where not in seen:
                problems.append(f"{where}: no price (add [prices.\"{t.name}\"] with input and "
                                "output in USD per million tokens)")
            if check_keys and not t.key_set and t.name not in seen:
                problems.append(f"{where}: no key ({t.key_source.removeprefix('env ')} is not set)")
                seen.add(t.name)
            seen.add(where)
    for key, models in settings.may_serve.items():
        provider = key.partition("/")[0]
        problems += [f"may_serve {key!r}: {model!r} has no price (add [prices.\"{provider}/{model}\"] "
                     "with input and output in USD per million tokens)"
                     for model in models if book.lookup(provider, model, at) is None]
    return problems


def longest_call_s(policy: RoutePolicy, settings: Settings) -> float | None:
    """The longest a call on ``policy`` can hold its budget reservation, in seconds: its answer
    and its one schema repair request are each routed under ``total_timeout_s`` (retries, waits
    and fallbacks included, :class:`~opsgate.routing.router.Router`), after at most
    ``token_count_timeout_s`` waiting for an input token count. ``None`` when the policy has no
    overall deadline (a policy built in code; the configuration always sets one)."""
    if policy.total_timeout_s is None:
        return None
    return 2 * policy.total_timeout_s + settings.token_count_timeout_s


def reservation_ttl_problems(settings: Settings) -> list[str]:
    """One line per route whose longest call (:func:`longest_call_s`) is not shorter than
    ``budget_reservation_ttl_s``: a reservation expires (charged its worst case, its further
    attempts refused) only when no call can still be in flight, so the TTL must outlast every
    call (docs/budgets.md, "Crashes"). Raises :class:`RouteConfigError` as :func:`policies_for`."""
    ttl = settings.budget_reservation_ttl_s
    policies = policies_for(settings)
    problems: list[str] = []
    for op in OPERATION_IDS:
        route = op if op in settings.routes else "default"
        longest = longest_call_s(policies[op], settings)
        if longest is None or longest < ttl:
            continue
        line = (f"OPSGATE_BUDGET_RESERVATION_TTL_S ({ttl:g} s) must be longer than the longest call "
                f"of route {route!r} ({longest:g} s: twice total_timeout_s, the answer and its repair "
                f"request, plus OPSGATE_TOKEN_COUNT_TIMEOUT_S), or a reservation could expire while "
                f"its call is in flight")
        if line not in problems:
            problems.append(line)
    return problems


def effective_routes(settings: Settings, book: PriceLookup, at: datetime) -> list[RouteView]:
    """Every operation's effective route, priced at ``at``. Raises :class:`RouteConfigError`
    when the routes name unknown operations or providers."""
    policies = policies_for(settings)
    key_of = _key_lookup(settings)
    views = []
    for op in OPERATION_IDS:
        route = op if op in settings.routes else "default"
        targets = tuple(
            TargetView(t, *key_of(t.provider), book.lookup(t.provider, t.model, at))
            for t in policies[op].chain
        )
        views.append(RouteView(op, route, policies[op], targets))
    return views


def routing_record(settings: Settings, book: PriceLookup, at: datetime) -> dict[str, Any]:
    """What the ledger's ``routing_config`` entry holds at start-up: the config file, every
    operation's effective route (targets, key source, price source and version, timeouts), the
    named providers (no keys) and ``digest``, the SHA-256 of the rest in canonical JSON."""
    routes = {
        v.operation: {
            "route": v.route,
            "targets": [[t.name, t.key_source, t.price.source if t.price else None,
                         t.price.version if t.price else None] for t in v.targets],
            "timeout_s": str(v.policy.timeout_s),
            "max_attempts_per_target": v.policy.max_attempts_per_target,
            "total_timeout_s": str(v.policy.total_timeout_s),
        }
        for v in effective_routes(settings, book, at)
    }
    providers = {name: p.model_dump() for name, p in sorted(settings.providers.items())}
    path = config_path()
    record: dict[str, Any] = {
        "config_file": str(path) if path.is_file() else None,
        "routes": routes,
        "providers": providers,
    }
    record["digest"] = hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return record


def _key_lookup(settings: Settings) -> Callable[[str], tuple[str, bool]]:
    def key_of(provider: str) -> tuple[str, bool]:
        if settings.sandbox and provider in _BUILTIN_KEY_ENV:
            return "sandbox", True
        if provider in _BUILTIN_KEY_ENV:
            return f"env {_BUILTIN_KEY_ENV[provider]}", getattr(settings, f"{provider}_api_key") is not None
        env = settings.providers[provider].api_key_env
        if env is None:
            return "none", True
        return f"env {env}", bool(os.environ.get(env))
    return key_of
