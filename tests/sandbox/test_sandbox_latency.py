"""Simulated provider latency on a rehearsal's clock: a task spends time only on its own monotonic
reading, the sandboxes' latencies are a function of seed, provider and count, and the gateway
records the announced latency as the call's latency over real HTTP."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from opsgate.clock import ManualClock, SystemClock
from opsgate.operations.io import input_from_file
from opsgate.runtime import simulated_latency
from opsgate.sandbox.latency import MEDIAN_MS, LatencyModel
from opsgate.security.auth import TokenService
from tests.gateways import gateway_settings, running_gateway

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_a_task_spends_time_on_its_own_monotonic_reading_until_the_clock_moves() -> None:
    clock = ManualClock()

    async def call(seconds: float) -> float:
        started = clock.monotonic()
        clock.spend(seconds)
        await asyncio.sleep(0)  # the other call runs in between
        return clock.monotonic() - started

    async def both() -> tuple[list[float], float]:
        return list(await asyncio.gather(call(0.25), call(1.5))), clock.monotonic()

    spent, outside = asyncio.run(both())
    assert spent == [0.25, 1.5] and outside == 0.0
    clock.spend(2.0)
    assert clock.monotonic() == 2.0
    clock.advance(10)
    assert clock.monotonic() == 10.0
    with pytest.raises(ValueError, match="negative"):
        clock.spend(-1)


def test_latencies_depend_only_on_seed_provider_and_count() -> None:
    model, again = LatencyModel(7), LatencyModel(7)
    assert model.next_ms("anthropic") == again.next_ms("anthropic")  # each provider counts on its own
    draws = [model.next_ms("deepseek") for _ in range(500)]
    assert draws == [again.next_ms("deepseek") for _ in range(500)]
    assert LatencyModel(8).next_ms("deepseek") != draws[0]
    median = sorted(draws)[250]
    assert 0.8 * MEDIAN_MS["deepseek"] < median < 1.2 * MEDIAN_MS["deepseek"]


def test_the_seed_needs_the_sandboxes_and_the_simulated_clock(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path, sandbox_latency_seed=1)
    with pytest.raises(ValueError, match="simulated clock"):
        simulated_latency(settings, SystemClock())
    assert simulated_latency(settings, ManualClock()) is not None
    assert simulated_latency(gateway_settings(tmp_path), ManualClock()) is None


def test_the_gateway_records_the_sandbox_latency_on_the_manual_clock(tmp_path: Path) -> None:
    clock = ManualClock(datetime.now(UTC))
    settings = gateway_settings(tmp_path, sandbox_latency_seed=3)
    body = input_from_file("email-classify", next(EXAMPLES.glob("email-classify.*")))
    with running_gateway(settings, clock) as gateway:
        token = TokenService(settings, clock).issue("alice", "user")
        answers = [gateway.post("email-classify", orjson.loads(orjson.dumps(body)), token=token) for _ in range(3)]
    expected = LatencyModel(3)
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.json()["provider"] for a in answers] == ["anthropic"] * 3
    assert [a.json()["latency_ms"] for a in answers] == [
        pytest.approx(expected.next_ms("anthropic"), abs=0.002) for _ in range(3)]
