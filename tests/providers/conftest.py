"""A loopback upstream that answers with canned provider responses and records what it received."""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from opsgate.providers.http import make_session


@dataclass
class Canned:
    """One canned answer: status, headers, body; ``lead`` bytes (e.g. DeepSeek's blank keep-alive
    lines) are sent first, one per ``lead_interval_s``; ``delay_s`` waits before anything;
    ``cut_after`` sends only that many body bytes of a longer declared body, then drops the socket;
    ``wait_for`` holds the answer until that event is set."""

    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    lead: list[bytes] = field(default_factory=list)
    lead_interval_s: float = 0.0
    cut_after: int | None = None
    wait_for: asyncio.Event | None = None


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    raw_url: str
    body: dict[str, Any]


class Upstream:
    """Queue answers with :meth:`reply`; read requests from :attr:`requests`."""

    def __init__(self) -> None:
        self.answers: deque[Canned] = deque()
        self.requests: list[Received] = []
        self.base_url = ""

    def reply(self, status: int = 200, body: Any = None, **kwargs: Any) -> None:
        raw = body if isinstance(body, bytes) else orjson.dumps(body if body is not None else {})
        self.answers.append(Canned(status=status, body=raw, **kwargs))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.requests.append(
            Received(
                method=request.method,
                path=request.path,
                query=request.query_string,
                headers=dict(request.headers),
                raw_url=str(request.rel_url),
                body=orjson.loads(raw) if raw else {},
            )
        )
        canned = self.answers.popleft()
        if canned.wait_for is not None:
            await canned.wait_for.wait()
        if canned.delay_s:
            await asyncio.sleep(canned.delay_s)
        response = web.StreamResponse(status=canned.status, headers=canned.headers)
        response.content_type = "application/json"
        if canned.cut_after is not None:
            response.content_length = len(canned.body)
            await response.prepare(request)
            await response.write(canned.body[: canned.cut_after])
            assert request.transport is not None
            request.transport.close()
            return response
        await response.prepare(request)
        for line in canned.lead:
            await response.write(line)
            await asyncio.sleep(canned.lead_interval_s)
        await response.write(canned.body)
        await response.write_eof()
        return response


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.base_url = f"http://{host}:{port}"
    yield server
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    client = make_session()
    yield client
    await client.close()


@pytest.fixture
def anthropic_key() -> str:
    """A key in Anthropic's shape, generated now (never a real secret)."""
    return (
        "sk-ant-api03-" + secrets.token_urlsafe(70)[:93] + "-" + secrets.token_urlsafe(6)[:6] + "AA"
    )


@pytest.fixture
def deepseek_key() -> str:
    """A key in DeepSeek's shape: ``sk-`` and 32 hex digits."""
    return "sk-" + secrets.token_hex(16)


@pytest.fixture
def gemini_key() -> str:
    """A key in Google's API-key shape: ``AIza`` and 35 URL-safe characters."""
    return "AIza" + secrets.token_urlsafe(30)[:35]


def _assert_safe_detail(exc: BaseException, *forbidden: str) -> None:
    detail = getattr(exc, "detail", str(exc))
    for value in (*forbidden, "127.0.0.1", "localhost", "http://"):
        assert value not in detail, f"{value!r} leaked into {detail!r}"
    assert detail == str(exc)


@pytest.fixture
def assert_safe_detail() -> Any:
    """``assert_safe_detail(exc, *forbidden)``: the client-visible detail holds none of
    ``forbidden`` (keys, raw body text), nor the upstream host or URL."""
    return _assert_safe_detail
