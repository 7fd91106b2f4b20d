"""Retry waits and route policies."""

from __future__ import annotations

import pytest

from opsgate.config import Settings
from opsgate.providers.errors import InvalidRequest, Overloaded, RateLimited, SpendCapReached
from opsgate.routing.policy import OPERATION_IDS, RoutePolicy, Target, default_policy, policies_for
from opsgate.routing.retry import BACKOFF_CAP_S, backoff_s, retry_wait_s


def test_retry_after_is_used_exactly() -> None:
    error = RateLimited("gemini", http_status=429, retry_after=32.0)
    assert retry_wait_s(error, 1, max_wait_s=60.0, rand=lambda: 0.9) == 32.0


def test_retry_after_above_the_cap_means_do_not_wait() -> None:
    error = RateLimited("gemini", http_status=429, retry_after=61.0)
    assert retry_wait_s(error, 1, max_wait_s=60.0) is None


def test_non_retryable_errors_get_no_wait() -> None:
    assert retry_wait_s(SpendCapReached("anthropic", http_status=429), 1, 60.0) is None
    assert retry_wait_s(InvalidRequest("anthropic", http_status=400), 1, 60.0) is None


@pytest.mark.parametrize(
    ("failures", "ceiling"), [(1, 0.25), (2, 0.5), (3, 1.0), (6, 8.0), (40, 8.0), (5000, 8.0)]
)
def test_backoff_is_full_jitter_under_a_doubling_ceiling(failures: int, ceiling: float) -> None:
    assert backoff_s(failures, rand=lambda: 0.0) == 0.0
    assert backoff_s(failures, rand=lambda: 0.5) == ceiling / 2
    assert backoff_s(failures, rand=lambda: 0.999) == pytest.approx(ceiling * 0.999)
    assert ceiling <= BACKOFF_CAP_S


def test_backoff_is_capped_by_the_policy_wait() -> None:
    assert retry_wait_s(Overloaded("anthropic"), 6, max_wait_s=1.0, rand=lambda: 0.5) == 1.0


def test_every_operation_gets_the_default_policy() -> None:
    settings = Settings(provider_timeout_s=45.0, max_retry_wait_s=12.0)
    policies = policies_for(settings)
    assert sorted(policies) == sorted(OPERATION_IDS) and len(policies) == 9
    default = default_policy(settings)
    assert set(policies.values()) == {default}
    assert default.chain == (
        Target("anthropic", "claude-opus-5"),  # issue 13: models the providers serve today
        Target("deepseek", "deepseek-flash"),
        Target("gemini", "gemini-3.8-flash"),
    )
    assert (default.timeout_s, default.max_retry_wait_s, default.total_timeout_s) == (
        45.0,
        12.0,
        90.0,
    )
    assert default.fallback_on_content_filter is False


def test_overrides_replace_one_operation() -> None:
    mine = RoutePolicy(
        chain=(Target("gemini", "gemini-2.0-flash"),),
        timeout_s=5.0,
        max_attempts_per_target=1,
        max_retry_wait_s=0.0,
    )
    policies = policies_for(Settings(), {"email-classify": mine})
    assert policies["email-classify"] is mine
    assert policies["email-compose"] == default_policy(Settings())


def test_overrides_for_unknown_operations_are_refused() -> None:
    with pytest.raises(ValueError, match="email-delete"):
        policies_for(Settings(), {"email-delete": default_policy(Settings())})


@pytest.mark.parametrize(
    "changes",
    [{"chain": ()}, {"timeout_s": 0}, {"max_attempts_per_target": 0}, {"total_timeout_s": -1.0}],
)
def test_invalid_policies_are_refused(changes: dict) -> None:
    fields = (
        dict(
            chain=(Target("gemini", "gemini-2.0-flash"),),
            timeout_s=5.0,
            max_attempts_per_target=1,
            max_retry_wait_s=0.0,
        )
        | changes
    )
    with pytest.raises(ValueError):
        RoutePolicy(**fields)
