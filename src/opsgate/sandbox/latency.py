"""Simulated provider latency for rehearsals: the sandboxes answer at once, and each answer carries
the latency it *would* have taken; the gateway's requests spend it on the rehearsal's clock.

Each provider's ``n``-th answer (counted from 0 since the application started) takes a seeded
log-normal latency: median :data:`MEDIAN_MS` of the provider, shape :data:`SIGMA`, drawn from
``random.Random(f"{seed}:{provider}:{n}")``. The draw depends only on the seed, the provider and the
count, so a window's latencies are the same multiset in every run that sends the same calls,
whatever the wall clock or the machine's load did.

The sandbox application (``create_app(latency=...)``) puts the milliseconds in the response header
:data:`LATENCY_HEADER`; :func:`spending_trace` is the gateway session's aiohttp trace that reads it
and calls :meth:`opsgate.clock.ManualClock.spend` in the requesting task, so the router's attempt
times and the pipeline's call latency (both read ``clock.monotonic()``) include it. Nothing else
reads the header: with the real clock the sandboxes are never given a latency model.
"""

from __future__ import annotations

import math
import random
import threading
from types import SimpleNamespace

import aiohttp
from aiohttp import web

from opsgate.clock import ManualClock

LATENCY_HEADER = "x-sandbox-latency-ms"
MEDIAN_MS = {"anthropic": 600.0, "deepseek": 450.0, "gemini": 500.0}
"""Median simulated latency per provider, in milliseconds."""
SIGMA = 0.3
"""Log-normal shape: p99 is about twice the median (exp(2.326 * 0.3) = 2.0)."""


class LatencyModel:
    """The seeded latencies of one sandbox application (see the module docstring). Thread-safe."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(MEDIAN_MS, 0)

    def next_ms(self, provider: str) -> float:
        """The latency of ``provider``'s next answer in milliseconds (advances its count);
        ``KeyError`` for an unknown provider."""
        with self._lock:
            n = self._counts[provider]
            self._counts[provider] = n + 1
        draw = random.Random(f"{self.seed}:{provider}:{n}").lognormvariate(math.log(MEDIAN_MS[provider]), SIGMA)
        return round(draw, 3)

    async def stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        """``on_response_prepare`` hook: a provider route's answer carries :data:`LATENCY_HEADER`."""
        provider = request.path.split("/", 2)[1]
        if provider in MEDIAN_MS:
            response.headers[LATENCY_HEADER] = f"{self.next_ms(provider):.3f}"


def spending_trace(clock: ManualClock) -> aiohttp.TraceConfig:
    """An aiohttp trace for the gateway's provider session: when an answer's headers arrive, the
    requesting task spends the answer's :data:`LATENCY_HEADER` milliseconds on ``clock``."""
    trace = aiohttp.TraceConfig()

    async def on_request_end(session: aiohttp.ClientSession, context: SimpleNamespace,
                             params: aiohttp.TraceRequestEndParams) -> None:
        value = params.response.headers.get(LATENCY_HEADER)
        if value is not None:
            clock.spend(float(value) / 1000)

    trace.on_request_end.append(on_request_end)
    return trace
