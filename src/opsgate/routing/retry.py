"""How long to wait before asking the same provider again.

When the provider said how long (``Retry-After``, Anthropic's reset headers, Gemini's RetryInfo;
the adapter puts it in ``error.retry_after``), that wait is honoured exactly, unless it exceeds the
policy's cap: then we do not wait at all and the router moves to the next target. Otherwise the
wait is exponential backoff with "full jitter" (AWS Architecture Blog, "Exponential Backoff And
Jitter"): ``uniform(0, min(cap, base × 2^(n-1)))`` after the n-th failure, which spreads retries
of many clients evenly instead of synchronising them.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from opsgate.providers.errors import ProviderError

BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 8.0


def backoff_s(failures: int, rand: Callable[[], float] = random.random) -> float:
    """Full-jitter backoff in seconds after ``failures`` (>= 1) consecutive failures.

    ``rand`` returns a float in [0, 1) (injectable for tests)."""
    doublings = min(failures - 1, 32)  # the cap is reached long before; avoids float overflow
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0**doublings)
    return rand() * ceiling


def retry_wait_s(
    error: ProviderError,
    failures: int,
    max_wait_s: float,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Seconds to wait before retrying after ``error``, or ``None`` when retrying this target is
    pointless: the error is not retryable, or the provider asked for longer than ``max_wait_s``.

    ``failures`` counts the consecutive failed attempts on this target, this one included.
    """
    if not error.retryable:
        return None
    if error.retry_after is not None:
        wait = max(0.0, error.retry_after)
        return wait if wait <= max_wait_s else None
    return min(backoff_s(failures, rand), max_wait_s)
