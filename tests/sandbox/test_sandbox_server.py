"""Running the sandbox: on the test's loop, in a thread, and as the CLI's long-running process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import aiohttp
import httpx
import pytest
from tests.gateways import free_port

from opsgate.sandbox import (
    FaultProfileError,
    SandboxServer,
    SandboxThread,
    create_app,
    running_sandbox,
)


def _refuses(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
    except httpx.ConnectError:
        return True
    return False


async def test_server_base_urls_and_stop_releases_port() -> None:
    server = SandboxServer()
    with pytest.raises(RuntimeError):
        server.base_urls  # noqa: B018
    await server.start()
    urls = server.base_urls
    origin = urls["anthropic"].removesuffix("/anthropic")
    assert urls == {p: f"{origin}/{p}" for p in ("anthropic", "deepseek", "gemini")}
    assert origin.startswith("http://127.0.0.1:")
    async with aiohttp.ClientSession() as session, session.get(origin + "/_sandbox/stats") as reply:
        assert (await reply.json())["faults"] == "none"
    await server.stop()
    await server.stop()
    assert await asyncio.to_thread(_refuses, origin + "/_sandbox/stats")


async def test_running_sandbox_on_a_chosen_port() -> None:
    port = free_port()
    async with running_sandbox("ratelimit:gemini", port=port) as server:
        assert server.base_urls["gemini"] == f"http://127.0.0.1:{port}/gemini"
        assert server.stats()["faults"] == "ratelimit:gemini"
        server.set_faults("none")
        assert server.stats()["faults"] == "none"


def test_invalid_profile_is_refused_at_start() -> None:
    with pytest.raises(FaultProfileError):
        create_app("outage:everything")
    with SandboxThread() as sandbox, pytest.raises(FaultProfileError):
        sandbox.set_faults("slow:forever")


def test_thread_serves_concurrent_requests() -> None:
    async def burst(base: str, count: int) -> list[int]:
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> int:
                body = {
                    "model": "deepseek-chat",
                    "messages": [{"role": "user", "content": f"n{i}"}],
                }
                async with session.post(
                    base + "/chat/completions", json=body, headers={"Authorization": "Bearer k"}
                ) as reply:
                    assert f"n{i}" in (await reply.json())["choices"][0]["message"]["content"]
                    return reply.status

            return await asyncio.gather(*(one(i) for i in range(count)))

    with SandboxThread("slow:20ms") as sandbox:
        statuses = asyncio.run(burst(sandbox.base_urls["deepseek"], 64))
        assert statuses == [200] * 64
        assert sandbox.stats()["providers"]["deepseek"] == {
            "requests": 64,
            "statuses": {"200": 64},
            "cancelled": 0,
        }
        sandbox.reset_stats()
        assert sandbox.stats()["providers"]["deepseek"]["requests"] == 0
    assert _refuses(sandbox.base_urls["deepseek"])


def test_unknown_routes_are_404_and_counted(sandbox: SandboxThread) -> None:
    reply = httpx.post(sandbox.base_urls["anthropic"] + "/v1/complete", json={})
    assert reply.status_code == 404
    gemini = httpx.post(
        sandbox.base_urls["gemini"] + "/v1beta/models/m:embedContent",
        json={},
        headers={"x-goog-api-key": "k"},
    )
    assert gemini.status_code == 404 and gemini.json()["error"]["status"] == "NOT_FOUND"
    providers = sandbox.stats()["providers"]
    assert providers["anthropic"]["statuses"] == {"404": 1}
    assert providers["gemini"]["statuses"] == {"404": 1}


def test_run_sandbox_forever_prints_base_urls_and_stops_on_interrupt() -> None:
    port = free_port()
    code = f"from opsgate.sandbox import run_sandbox_forever; run_sandbox_forever('127.0.0.1', {port}, 'flaky')"
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as a `&` job inherits it
    )
    try:
        lines = [process.stdout.readline().strip() for _ in range(3)]  # type: ignore[union-attr]
        assert lines == [
            f"{p} base URL: http://127.0.0.1:{port}/{p}"
            for p in ("anthropic", "deepseek", "gemini")
        ]
        stats = httpx.get(f"http://127.0.0.1:{port}/_sandbox/stats").json()
        assert stats["faults"] == "flaky"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)  # drains the pipes: a full stderr pipe cannot stall the exit
        assert process.returncode == 0 and "PROVIDER SANDBOX" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
