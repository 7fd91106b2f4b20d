"""The composition root: a start-up step that raises closes what was already open.

``start_runtime`` opens the sandbox, the HTTP session, the database, the ledger writer thread,
then (later) the checkpointer task and the security-count flusher. Each test breaks one step with
the real services around it and looks for what would leak: a live ``opsgate-ledger`` thread, a
sandbox still accepting connections, a checkpoint task still scheduled.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.gateways import gateway_settings

import opsgate.runtime as runtime_module
from opsgate.monitoring.worker import Worker
from opsgate.runtime import cli_services, start_runtime
from opsgate.sandbox.server import SandboxServer


class _Broken(RuntimeError):
    pass


def _ledger_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "opsgate-ledger" and t.is_alive()}


def _checkpoint_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "ledger-checkpoints" and not t.done()]


def _expiry_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == runtime_module.EXPIRY_TASK and not t.done()]


@pytest.fixture
def sandboxes(monkeypatch: pytest.MonkeyPatch) -> list[SandboxServer]:
    """Every sandbox the runtime starts."""
    started: list[SandboxServer] = []

    class Recorded(SandboxServer):
        async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
            await super().start(host, port)
            started.append(self)

    monkeypatch.setattr(runtime_module, "SandboxServer", Recorded)
    return started


async def _refuses(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(url, timeout=aiohttp.ClientTimeout(total=5)):
            return False
    except aiohttp.ClientConnectorError:
        return True


@pytest.mark.parametrize("step", ["build_metering", "ProviderStatusSync"])
async def test_a_failing_start_up_step_leaves_no_thread_sandbox_or_task(
    step: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandboxes: list[SandboxServer]
) -> None:
    settings = gateway_settings(tmp_path, ledger_signing_key_file=tmp_path / "ledger.key")
    threads_before = _ledger_threads()
    seen: dict[str, Any] = {}

    def broken(*args: Any, **kwargs: Any) -> Any:
        seen["threads"] = _ledger_threads() - threads_before
        seen["checkpoints"] = len(_checkpoint_tasks())
        raise _Broken(step)

    monkeypatch.setattr(runtime_module, step, broken)
    with pytest.raises(_Broken):
        await start_runtime(settings)
    assert len(seen["threads"]) == 1 and len(sandboxes) == 1  # they were running
    assert seen["checkpoints"] == (1 if step == "ProviderStatusSync" else 0)
    assert _ledger_threads() - threads_before == set()
    assert await _refuses(sandboxes[0].base_urls["anthropic"])
    assert _checkpoint_tasks() == [] and _expiry_tasks() == []


async def test_close_stops_everything_start_runtime_opened(tmp_path: Path, sandboxes: list[SandboxServer]) -> None:
    threads_before = _ledger_threads()
    runtime = await start_runtime(gateway_settings(tmp_path, ledger_signing_key_file=tmp_path / "ledger.key"))
    assert len(_ledger_threads() - threads_before) == 1 and len(_checkpoint_tasks()) == 1
    assert len(_expiry_tasks()) == 1  # the reservation expiry timer runs while the gateway serves
    pool = runtime.gateway._prepare_pool  # the thread a large or calendar input is prepared in
    preparer = await asyncio.get_running_loop().run_in_executor(pool, threading.current_thread)
    await runtime.close()
    assert _ledger_threads() - threads_before == set()
    preparer.join(5)
    assert not preparer.is_alive()
    assert await _refuses(sandboxes[0].base_urls["anthropic"])
    assert _checkpoint_tasks() == [] and _expiry_tasks() == [] and runtime.session.closed


def test_cli_services_close_their_ledger_writer(tmp_path: Path) -> None:
    threads_before = _ledger_threads()
    with cli_services(gateway_settings(tmp_path, sandbox=False)) as services:
        assert len(_ledger_threads() - threads_before) == 1
        assert services.incidents.list() == []
    assert _ledger_threads() - threads_before == set()


async def test_the_dashboard_and_the_worker_judge_rollouts_with_the_same_canary_settings(tmp_path: Path) -> None:
    """The Rollouts page's comparison uses the API process's ``runtime.rollout.limits``; the
    controller runs in the worker: both are ``Thresholds.from_settings`` of the same Settings."""
    settings = gateway_settings(tmp_path, sandbox=False, canary_min_requests=7, canary_max_cost_ratio=2.5,
                                worker_lock_file=tmp_path / "worker.lock")
    with cli_services(settings) as services:
        async with aiohttp.ClientSession() as session:
            worker = Worker(settings, services.engine, services.ledger, services.clock, session)
            assert services.rollout.limits == worker.rollout.limits
            assert (worker.rollout.limits.min_requests, worker.rollout.limits.max_cost_ratio) == (7, 2.5)
