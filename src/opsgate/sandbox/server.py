"""Running the sandbox application: on the caller's event loop, in a background thread, or
forever for the CLI (``opsgate sandbox``)."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from opsgate.sandbox.app import create_app, stats_of
from opsgate.sandbox.faults import PROVIDERS
from opsgate.sandbox.latency import LatencyModel
from opsgate.sandbox.state import STATE

SHUTDOWN_TIMEOUT_S = 0.5
"""How long ``stop`` lets open requests finish before cancelling them (hung ones included)."""
START_TIMEOUT_S = 10.0


class SandboxServer:
    """The sandbox application on a loopback TCP port, on the running event loop.

    ``faults`` is a profile string (:mod:`opsgate.sandbox.faults`); ``latency`` the simulated
    latency answers announce (:mod:`opsgate.sandbox.latency`; None: none). Handlers are cancelled when
    their client disconnects, so a ``timeout`` hang ends as soon as the client gives up.
    Usable as ``async with SandboxServer(...) as server``.
    """

    def __init__(self, faults: str = "none", latency: LatencyModel | None = None) -> None:
        self.app = create_app(faults, latency)
        self._runner: web.AppRunner | None = None
        self._origin: str | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (port 0: a free port chosen by the OS)."""
        runner = web.AppRunner(
            self.app,
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            access_log=None,
        )
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        self._runner = runner
        self._origin = f"http://{_url_host(bound_host)}:{bound_port}"

    @property
    def base_urls(self) -> dict[str, str]:
        """``{"anthropic": ".../anthropic", "deepseek": ".../deepseek", "gemini": ".../gemini"}``.

        Raises ``RuntimeError`` before :meth:`start`."""
        if self._origin is None:
            raise RuntimeError("the sandbox server is not started")
        return {p: f"{self._origin}/{p}" for p in PROVIDERS}

    def set_faults(self, profile: str) -> None:
        """Switch the fault profile (raises ``FaultProfileError``); counters restart."""
        self.app[STATE].faults.set(profile)

    def stats(self) -> dict[str, Any]:
        """The ``GET /_sandbox/stats`` document (see :mod:`opsgate.sandbox.app`)."""
        return stats_of(self.app[STATE])

    def reset_stats(self) -> None:
        """Zero the request statistics."""
        self.app[STATE].stats.reset()

    async def stop(self) -> None:
        """Stop listening, cancel what is still running, release the port. Idempotent."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


@asynccontextmanager
async def running_sandbox(
    faults: str = "none", host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[SandboxServer]:
    """``async with running_sandbox("flaky") as server:`` a started :class:`SandboxServer`."""
    server = SandboxServer(faults)
    await server.start(host, port)
    try:
        yield server
    finally:
        await server.stop()


class SandboxThread:
    """A :class:`SandboxServer` on its own event loop in a daemon thread, for synchronous tests
    and benchmarks. ``start()`` returns once the port is bound; ``stop()`` joins the thread.
    Usable as ``with SandboxThread(...) as sandbox``."""

    def __init__(self, faults: str = "none", host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = SandboxServer(faults)
        self._address = (host, port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="opsgate-sandbox", daemon=True)

    def start(self) -> SandboxThread:
        """Start the thread and the server; raises what the server's start raised."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._server.start(*self._address), self._loop)
        future.result(timeout=START_TIMEOUT_S)
        return self

    @property
    def base_urls(self) -> dict[str, str]:
        """As :attr:`SandboxServer.base_urls`."""
        return self._server.base_urls

    def set_faults(self, profile: str) -> None:
        """As :meth:`SandboxServer.set_faults` (thread-safe)."""
        self._server.set_faults(profile)

    def stats(self) -> dict[str, Any]:
        """As :meth:`SandboxServer.stats` (thread-safe)."""
        return self._server.stats()

    def reset_stats(self) -> None:
        """As :meth:`SandboxServer.reset_stats` (thread-safe)."""
        self._server.reset_stats()

    def stop(self) -> None:
        """Stop the server and its loop, and join the thread. Idempotent."""
        if not self._thread.is_alive():
            return
        stopping = asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop)
        stopping.result(timeout=START_TIMEOUT_S + SHUTDOWN_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()


def run_sandbox_forever(host: str = "127.0.0.1", port: int = 8787, faults: str = "none") -> None:
    """Serve the sandboxes until SIGINT (Ctrl-C) or SIGTERM, announcing the mode and base URLs
    loudly, then stop and return. Call it from the main thread (it installs the two handlers,
    even where the process inherited SIGINT ignored, as a job started with ``&`` by a
    non-interactive shell does: asyncio's own Ctrl-C handling is then off)."""
    asyncio.run(_serve_forever(host, port, faults))


async def _serve_forever(host: str, port: int, faults: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_sandbox(faults, host, port) as server:
        print(
            "*** opsgate PROVIDER SANDBOX: fake Anthropic, DeepSeek and Gemini APIs ***",
            file=sys.stderr,
        )
        print(f"fault profile: {faults}", file=sys.stderr)
        for provider, url in server.base_urls.items():
            print(f"{provider} base URL: {url}", flush=True)
        await stop.wait()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
