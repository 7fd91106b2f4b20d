"""Loopback receivers standing in for Discord, PagerDuty and Twilio (one aiohttp server) and an
SMTP server (aiosmtpd) that record what they get; a scripted answer sequence per path."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller


@dataclass
class Received:
    path: str
    query: dict[str, str]
    body: Any
    auth: str | None


@dataclass
class HttpReceiver:
    """``script[path]``: statuses (with optional Retry-After) answered in order, then 2xx."""

    received: list[Received] = field(default_factory=list)
    script: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    failing: Any = None  # optional callable(path) -> (status, headers) | None
    ok: dict[str, int] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)  # paths that accept the request and never answer
    hang_seen: int = 0  # requests held by ``hang``
    released: asyncio.Event = field(default_factory=asyncio.Event)  # set by stop(): held requests end
    runner: web.AppRunner | None = None
    base_url: str = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self.released.set()
        if self.runner is not None:
            await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path
        if path in self.hang:
            self.hang_seen += 1
            await self.released.wait()
        if self.failing is not None and (answer := self.failing(path)) is not None:
            return web.json_response({"message": "failing"}, status=answer[0], headers=answer[1])
        pending = self.script.get(path) or []
        if pending:
            status, headers = pending.pop(0)
            return web.json_response({"message": "scripted"}, status=status, headers=headers)
        if request.content_type == "application/x-www-form-urlencoded":
            body: Any = dict(await request.post())
        else:
            body = await request.json()
        self.received.append(Received(path, dict(request.query), body, request.headers.get("Authorization")))
        status = self.ok.get(path, 200)
        return web.json_response({"id": str(len(self.received))}, status=status)

    def bodies(self, path: str) -> list[Any]:
        return [r.body for r in self.received if r.path == path]


class _Handler:
    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.messages.append({"to": ",".join(envelope.rcpt_tos),
                              "data": envelope.content.decode("utf-8", "replace")})
        return "250 OK"


class SmtpReceiver:
    def __init__(self) -> None:
        self.handler = _Handler()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def start(self) -> int:
        self.controller.start()
        return self.port

    def stop(self) -> None:
        self.controller.stop()

    @property
    def messages(self) -> list[dict[str, str]]:
        return self.handler.messages


def dumps(obj: Any) -> str:
    return json.dumps(obj)
