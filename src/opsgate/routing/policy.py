"""Routing policies: which provider/model chain an operation uses, and how patiently.

:func:`policies_for` gives every operation id a :class:`RoutePolicy`. Today all nine share
:func:`default_policy`; per-operation policies come in through its ``overrides`` argument (the
seam for reading them from settings later).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from opsgate.config import Settings

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


DEFAULT_CHAIN: tuple[Target, ...] = (
    Target("anthropic", "claude-opus-4-5"),
    Target("deepseek", "deepseek-chat"),
    Target("gemini", "gemini-2.0-flash"),
)


def default_policy(settings: Settings) -> RoutePolicy:
    """The policy every operation gets unless overridden: :data:`DEFAULT_CHAIN`, the settings'
    ``provider_timeout_s`` per attempt and ``max_retry_wait_s``, three attempts per target, and an
    overall deadline of twice the attempt timeout."""
    return RoutePolicy(
        chain=DEFAULT_CHAIN,
        timeout_s=settings.provider_timeout_s,
        max_attempts_per_target=DEFAULT_MAX_ATTEMPTS_PER_TARGET,
        max_retry_wait_s=settings.max_retry_wait_s,
        total_timeout_s=2 * settings.provider_timeout_s,
    )


def policies_for(
    settings: Settings, overrides: Mapping[str, RoutePolicy] | None = None
) -> dict[str, RoutePolicy]:
    """A policy for each of :data:`OPERATION_IDS`: ``overrides[op]`` when given, else
    :func:`default_policy`. Raises ``ValueError`` if ``overrides`` names an unknown operation."""
    overrides = overrides or {}
    unknown = set(overrides) - set(OPERATION_IDS)
    if unknown:
        raise ValueError(f"route policy for unknown operation(s): {sorted(unknown)}")
    default = default_policy(settings)
    return {op: overrides.get(op, default) for op in OPERATION_IDS}
