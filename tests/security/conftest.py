"""Security fixtures: ``connect``, the 1Password Connect stand-in of :mod:`tests.security.op_connect`
on a loopback port, as ``(ConnectClient, paths seen, aiohttp session, port)``."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from tests.security.op_connect import TOKEN, connect_app

from opsgate.security.secrets_connect import ConnectClient


@pytest.fixture
async def connect():  # type: ignore[no-untyped-def]
    seen: list[str] = []
    runner = web.AppRunner(connect_app(seen))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        yield ConnectClient(session, f"http://127.0.0.1:{port}", TOKEN), seen, session, port
    await runner.cleanup()
