"""Routing policies: which provider/model chain an operation uses, and how patiently.

:func:`policies_for` gives every operation id a :class:`RoutePolicy`, read from the settings'
``[routes.*]`` tables of ``opsgate.toml``: ``routes.default`` applies to every operation without
its own route, and an operation's route inherits every field it does not set. Without any route
the built-in :data:`DEFAULT_CHAIN` applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from opsgate.config import RouteConfig, Settings
from opsgate.providers.http import check_base_url, is_loopback_url
from opsgate.providers.registry import (
    ANTHROPIC_DEFAULT_MODEL,
    DEEPSEEK_DEFAULT_MODEL,
    GEMINI_DEFAULT_MODEL,
)

OPERATION_IDS: tuple[str, ...] = (
    "email-compose",
    "email-classify",
    "email-respond",
    "calendar-prep",
    "calendar-time",
    "task-prioritize",
    "task-breakdown",
    "analytics-summary",
    "analytics-anomaly",
)
"""The public ids of the nine AI operations."""

DEFAULT_MAX_ATTEMPTS_PER_TARGET = 3


@dataclass(frozen=True, slots=True)
class Target:
    """One place to send a request: a provider name (``anthropic``, ``deepseek``, ``gemini``, or a
    configured OpenAI-compatible endpoint) and that provider's model id."""

    provider: str
    model: str


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """How the router serves one operation.

    - ``chain``: targets in order of preference; the router falls back along it.
    - ``timeout_s``: the limit of one attempt (seconds).
    - ``max_attempts_per_target``: attempts on one target before moving on (>= 1).
    - ``max_retry_wait_s``: the longest wait before a retry; a provider asking for more is not
      waited for, the router moves to the next target instead.
    - ``fallback_on_content_filter``: whether a content refusal may be retried elsewhere.
    - ``total_timeout_s``: the deadline of the whole routed call, waits included (``None``: none).

    Raises ``ValueError`` on an empty chain or a non-positive limit.
    """

    chain: tuple[Target, ...]
    timeout_s: float
    max_attempts_per_target: int
    max_retry_wait_s: float
    fallback_on_content_filter: bool = False
    total_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if not self.chain:
            raise ValueError("a route policy needs at least one target")
        if self.timeout_s <= 0 or self.max_attempts_per_target < 1 or self.max_retry_wait_s < 0:
            raise ValueError("timeout_s must be > 0, max_attempts_per_target >= 1, waits >= 0")
        if self.total_timeout_s is not None and self.total_timeout_s <= 0:
            raise ValueError("total_timeout_s must be > 0 when set")


BUILTIN_PROVIDERS: tuple[str, ...] = ("anthropic", "deepseek", "gemini")
"""Providers every gateway has an adapter for; ``[providers.*]`` adds OpenAI-compatible ones."""

DEFAULT_CHAIN: tuple[Target, ...] = (
    Target("anthropic", ANTHROPIC_DEFAULT_MODEL),
    Target("deepseek", DEEPSEEK_DEFAULT_MODEL),
    Target("gemini", GEMINI_DEFAULT_MODEL),
)
"""The seed's shape with models the providers serve today (read 2026-12-04, see docs/providers.md):
a premium Claude model, then DeepSeek, then a Gemini Flash model."""


class RouteConfigError(ValueError):
    """The routing configuration cannot be served; ``problems`` holds one line per problem, each
    naming the route, the target and what is missing."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def parse_target(text: str) -> Target:
    """``"provider/model"`` -> :class:`Target` (split at the first ``/``: model ids may hold more)."""
    provider, _, model = text.partition("/")
    return Target(provider, model)


def default_policy(settings: Settings) -> RoutePolicy:
    """The policy of every operation without its own route: ``[routes.default]`` over the
    built-ins (:data:`DEFAULT_CHAIN`, the settings' ``provider_timeout_s`` per attempt and
    ``max_retry_wait_s``, three attempts per target, an overall deadline of twice the attempt
    timeout)."""
    return _policy(settings.routes.get("default", RouteConfig()), _builtin_policy(settings))


def _builtin_policy(settings: Settings) -> RoutePolicy:
    return RoutePolicy(
        chain=DEFAULT_CHAIN,
        timeout_s=settings.provider_timeout_s,
        max_attempts_per_target=DEFAULT_MAX_ATTEMPTS_PER_TARGET,
        max_retry_wait_s=settings.max_retry_wait_s,
        total_timeout_s=2 * settings.provider_timeout_s,
    )


def _policy(route: RouteConfig, base: RoutePolicy) -> RoutePolicy:
    """``route``'s set fields over ``base``; a route that sets ``timeout_s`` but not
    ``total_timeout_s`` gets twice its timeout as the overall deadline."""
    timeout = route.timeout_s if route.timeout_s is not None else base.timeout_s
    total = route.total_timeout_s
    if total is None:
        total = 2 * timeout if route.timeout_s is not None else base.total_timeout_s
    return replace(
        base,
        chain=tuple(parse_target(t) for t in route.chain) if route.chain else base.chain,
        timeout_s=timeout,
        max_attempts_per_target=route.max_attempts_per_target or base.max_attempts_per_target,
        total_timeout_s=total,
    )


def route_problems(settings: Settings) -> list[str]:
    """Every problem of ``settings.routes`` and ``settings.providers`` that would make a call
    unroutable, one line each (``route 'email-classify', target 'local/qwen3-8b': unknown provider
    'local' (...)``): unknown operations and providers, a named provider's bad ``base_url`` (or a
    non-loopback one in sandbox mode), a ``[prices]`` key naming an unknown provider. Missing
    prices are checked by :func:`opsgate.routing.effective.config_problems`."""
    problems = [
        f"route {name!r}: no such operation (operations: default, {', '.join(OPERATION_IDS)})"
        for name in settings.routes
        if name != "default" and name not in OPERATION_IDS
    ]
    problems += [
        f"provider {name!r}: the name of a built-in provider cannot be reused"
        for name in settings.providers
        if name in BUILTIN_PROVIDERS
    ]
    problems += _endpoint_problems(settings)
    known = set(BUILTIN_PROVIDERS) | set(settings.providers)
    routed = {parse_target(t).provider for route in settings.routes.values() for t in route.chain or ()}
    problems += [  # an unknown provider that a route names is reported once, on the route below
        f"price {key!r}: unknown provider {key.partition('/')[0]!r} (known: {', '.join(sorted(known))})"
        for key in settings.prices
        if key.partition("/")[0] not in known | routed
    ]
    for name, route in settings.routes.items():
        for target in route.chain or ():
            provider = parse_target(target).provider
            if provider not in known:
                problems.append(
                    f"route {name!r}, target {target!r}: unknown provider {provider!r} "
                    f"(known: {', '.join(sorted(known))}; add [providers.{provider}] to the config)"
                )
    return problems


def _endpoint_problems(settings: Settings) -> list[str]:
    """Every provider's base URL must pass :func:`check_base_url` (the built-in ones unless the
    sandboxes replace them); in sandbox mode a named provider must also be on loopback, since
    sandbox mode promises that no real provider is called."""
    urls = {name: config.base_url for name, config in settings.providers.items()}
    if not settings.sandbox:
        urls |= {name: getattr(settings, f"{name}_base_url") for name in BUILTIN_PROVIDERS}
    problems = []
    for name, base_url in urls.items():
        try:
            url = check_base_url(base_url)
        except ValueError as exc:
            problems.append(f"provider {name!r}: {exc}")
            continue
        if settings.sandbox and not is_loopback_url(url):
            problems.append(
                f"provider {name!r}: sandbox mode calls no real provider, but {url} is not on "
                "loopback (point base_url at a loopback server, or run without --sandbox)"
            )
    return problems


def policies_for(
    settings: Settings, overrides: Mapping[str, RoutePolicy] | None = None
) -> dict[str, RoutePolicy]:
    """A policy for each of :data:`OPERATION_IDS`: ``overrides[op]`` when given, else the
    operation's ``[routes.<op>]`` over :func:`default_policy`.

    Raises ``ValueError`` if ``overrides`` names an unknown operation and
    :class:`RouteConfigError` (one line per problem) for routes naming an unknown operation or
    provider."""
    overrides = overrides or {}
    unknown = set(overrides) - set(OPERATION_IDS)
    if unknown:
        raise ValueError(f"route policy for unknown operation(s): {sorted(unknown)}")
    problems = route_problems(settings)
    if problems:
        raise RouteConfigError(problems)
    default = default_policy(settings)
    return {
        op: overrides.get(op) or _policy(settings.routes.get(op, RouteConfig()), default)
        for op in OPERATION_IDS
    }
