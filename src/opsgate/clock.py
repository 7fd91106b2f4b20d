"""Injected time: every component asks a :class:`Clock`, so tests and rehearsals can compress time."""

from __future__ import annotations

import time
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """A source of timezone-aware UTC wall time and a monotonic counter (seconds)."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clock: ``datetime.now(UTC)`` and ``time.monotonic()``."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that only moves when told to (tests, compressed rehearsals).

    :meth:`spend` lets one asyncio task (one request) spend simulated time, e.g. a simulated
    provider's latency, without moving the clock for anyone else: that task's :meth:`monotonic`
    reads the shared counter plus what it spent since the shared clock last moved (the next
    :meth:`advance` starts every task from zero again). :meth:`now` is the shared time for all."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._mono = 0.0
        self._spent: ContextVar[tuple[float, float]] = ContextVar(f"manual-clock-{id(self)}", default=(0.0, 0.0))

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        at, spent = self._spent.get()
        return self._mono + (spent if at == self._mono else 0.0)

    def advance(self, seconds: float) -> None:
        """Move both the wall time and the monotonic counter forward by ``seconds``."""
        self._now += timedelta(seconds=seconds)
        self._mono += seconds

    def spend(self, seconds: float) -> None:
        """Let the calling task (its context) spend ``seconds`` (>= 0) of simulated time: only its
        own :meth:`monotonic` moves, until the shared clock next moves."""
        if seconds < 0:
            raise ValueError(f"cannot spend negative time ({seconds} s)")
        self._spent.set((self._mono, self.monotonic() - self._mono + seconds))
