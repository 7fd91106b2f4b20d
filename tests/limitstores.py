"""For the rate-limit stores' tests: a fresh key prefix on the test Redis (127.0.0.1:6379), and a
clock of seconds that moves only when told to."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis

REDIS_URL = "redis://127.0.0.1:6379/0"


@asynccontextmanager
async def redis_prefix() -> AsyncIterator[tuple[str, list[Any]]]:
    """``(prefix, made)``: a fresh prefix, and a list the test appends the stores it makes on it
    to (each with an async ``close()``). On leaving, when any was made, every key under the prefix
    is deleted and every store closed."""
    prefix = f"opsgate-test-{uuid.uuid4().hex}"
    made: list[Any] = []
    yield prefix, made
    if made:
        client = aioredis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        for store in made:
            await store.close()


class FakeClock:
    """Seconds that move only when told to: ``now``, from ``start``."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
