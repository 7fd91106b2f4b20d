"""In-memory providers and a recording sleep for the routing tests (no network)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from opsgate.clock import ManualClock
from opsgate.providers.base import Completion, CompletionRequest, FinishReason, Usage
from opsgate.providers.errors import ProviderError

REQUEST = CompletionRequest(
    system="You sort email.", user="Classify: invoice overdue", max_tokens=64
)

Step = ProviderError | Callable[[], ProviderError] | None
"""A scripted answer: an error to raise, or ``None`` for a successful completion."""


def completion(provider: str, model: str) -> Completion:
    return Completion(
        provider=provider,
        model=model,
        text='{"label": "billing"}',
        data={"label": "billing"},
        usage=Usage(input_tokens=12, output_tokens=5),
        finish_reason=FinishReason.STOP,
        raw_finish_reason="end_turn",
        provider_request_id=f"req-{provider}",
        provider_latency_ms=3.0,
    )


@dataclass
class ScriptedProvider:
    """Answers from ``script`` in order (then succeeds forever); records every call.

    ``latency_s`` advances the shared clock per call; ``gate`` (if set) is awaited inside the call
    so a test can hold a call in flight."""

    name: str
    clock: ManualClock
    script: list[Step] = field(default_factory=list)
    latency_s: float = 0.0
    gate: asyncio.Event | None = None
    calls: list[tuple[str, float]] = field(default_factory=list)

    async def complete(
        self, request: CompletionRequest, model: str, timeout_s: float
    ) -> Completion:
        self.calls.append((model, timeout_s))
        if self.gate is not None:
            await self.gate.wait()
        self.clock.advance(self.latency_s)
        step = self.script.pop(0) if self.script else None
        if step is None:
            return completion(self.name, model)
        raise step() if callable(step) else step


class RecordingSleep:
    """A fake ``asyncio.sleep`` that records each wait and advances the clock by it."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(seconds)
