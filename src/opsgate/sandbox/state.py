"""Per-application sandbox state: fault decisions, request statistics, prompt cache, ids."""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from opsgate.sandbox.faults import PROVIDERS, FaultState

CACHE_MIN_TOKENS = {"anthropic": 1024, "deepseek": 64, "gemini": 1024}
"""Shortest cacheable prefix per provider, in tokens (the providers' documented minimums)."""
DEEPSEEK_CACHE_UNIT = 64
"""DeepSeek's context cache stores prefixes in 64-token units."""


class Stats:
    """Requests that reached each provider sandbox, by final HTTP status, and token-count
    requests (kept apart: they are free and bill nothing). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._requests: Counter[str] = Counter()
        self._statuses: dict[str, Counter[int]] = {p: Counter() for p in PROVIDERS}
        self._cancelled: Counter[str] = Counter()

    def started(self, provider: str) -> None:
        """Count a request that reached ``provider``'s route."""
        with self._lock:
            self._requests[provider] += 1

    def counted(self, provider: str) -> None:
        """Count a request that reached ``provider``'s token-count route."""
        with self._lock:
            self._counts[provider] += 1

    def counts(self) -> dict[str, int]:
        """``{provider: token-count requests}`` for all three providers."""
        with self._lock:
            return {p: self._counts[p] for p in PROVIDERS}

    def finished(self, provider: str, status: int) -> None:
        """Count the HTTP ``status`` ``provider`` answered with."""
        with self._lock:
            self._statuses[provider][status] += 1

    def cancelled(self, provider: str) -> None:
        """Count a request whose handler was cancelled before it answered."""
        with self._lock:
            self._cancelled[provider] += 1

    def requests(self, provider: str) -> int:
        """How many requests reached ``provider`` so far."""
        with self._lock:
            return self._requests[provider]

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """``{provider: {"requests": int, "statuses": {"200": int, ...}, "cancelled": int}}``
        for all three providers (status keys are strings, as in the JSON endpoint)."""
        with self._lock:
            return {
                p: {
                    "requests": self._requests[p],
                    "statuses": {str(s): n for s, n in sorted(self._statuses[p].items())},
                    "cancelled": self._cancelled[p],
                }
                for p in PROVIDERS
            }

    def reset(self) -> None:
        """Forget every count."""
        with self._lock:
            self._requests.clear()
            self._counts.clear()
            self._cancelled.clear()
            for counter in self._statuses.values():
                counter.clear()


class PromptCache:
    """Which cacheable prompt prefixes each provider has already seen (since start or reset).

    The first request with a prefix writes it (Anthropic ``cache_creation_input_tokens``), later
    ones read it (``cache_read_input_tokens``, DeepSeek ``prompt_cache_hit_tokens``, Gemini
    ``cachedContentTokenCount``), so usage is deterministic for a given request sequence.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: set[bytes] = set()

    def seen_before(self, provider: str, model: str, prefix: str) -> bool:
        """True when this (provider, model, prefix) was seen before; records it either way."""
        key = hashlib.sha256(f"{provider}\0{model}\0{prefix}".encode()).digest()
        with self._lock:
            hit = key in self._seen
            self._seen.add(key)
        return hit

    def clear(self) -> None:
        """Forget every prefix."""
        with self._lock:
            self._seen.clear()


@dataclass
class SandboxState:
    """Everything the three provider handlers share inside one application."""

    faults: FaultState
    stats: Stats = field(default_factory=Stats)
    cache: PromptCache = field(default_factory=PromptCache)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def next_id(self) -> str:
        """A fresh 24-character identifier, sequential so runs are repeatable."""
        return f"sbx{next(self._ids):021d}"


STATE: web.AppKey[SandboxState] = web.AppKey("opsgate_sandbox_state", SandboxState)
