"""The Discord anchor against a loopback stand-in speaking the webhook API (Discord is not
reachable here): ``POST /api/webhooks/{id}/{token}?wait=true`` answers the message object,
``GET .../messages/{id}`` reads it back, and a 429 carries ``retry_after`` and ``Retry-After``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr
from sqlalchemy import Engine

from opsgate.clock import ManualClock
from opsgate.ledger.anchors import DiscordAnchor, discord_references, publish
from opsgate.ledger.checkpoint import Signer, generate_signer_key
from opsgate.ledger.errors import AnchorError
from opsgate.ledger.service import create_checkpoint
from opsgate.ledger.verify import verify
from opsgate.ledger.writer import Ledger

WEBHOOK_ID, TOKEN = "112233445566778899", "tok-" + "x" * 60


class FakeDiscord:
    """Webhook messages kept in memory; the first ``rate_limited`` posts answer 429."""

    def __init__(self, rate_limited: int = 0) -> None:
        self.messages: dict[str, dict[str, object]] = {}
        self.rate_limited = rate_limited
        self.posts: list[tuple[float, str | None]] = []

    def app(self) -> web.Application:
        app = web.Application()
        base = f"/api/webhooks/{WEBHOOK_ID}/{TOKEN}"
        app.router.add_post(base, self.execute)
        app.router.add_get(base + "/messages/{message_id}", self.get)
        return app

    async def execute(self, request: web.Request) -> web.Response:
        self.posts.append((time.monotonic(), request.query.get("wait")))
        if self.rate_limited:
            self.rate_limited -= 1
            return web.json_response(
                {"message": "You are being rate limited.", "retry_after": 0.2, "global": False},
                status=429, headers={"Retry-After": "1", "X-RateLimit-Scope": "user"},
            )
        body = await request.json()
        message = {"id": str(1_200_000_000_000_000_000 + len(self.messages)), "type": 0,
                   "content": body["content"], "channel_id": "1", "webhook_id": WEBHOOK_ID}
        self.messages[message["id"]] = message  # type: ignore[index]
        return web.json_response(message if request.query.get("wait") == "true" else None,
                                 status=200 if request.query.get("wait") == "true" else 204)

    async def get(self, request: web.Request) -> web.Response:
        message = self.messages.get(request.match_info["message_id"])
        if message is None:
            return web.json_response({"message": "Unknown Message", "code": 10008}, status=404)
        return web.json_response(message)


@pytest.fixture
async def discord() -> AsyncIterator[tuple[FakeDiscord, str]]:
    fake = FakeDiscord(rate_limited=2)
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield fake, f"http://127.0.0.1:{port}/api/webhooks/{WEBHOOK_ID}/{TOKEN}"
    await runner.cleanup()


async def test_checkpoints_posted_with_wait_and_429_honoured(
    engine: Engine, ledger: Ledger, clock: ManualClock, discord: tuple[FakeDiscord, str]
) -> None:
    fake, url = discord
    signer = Signer(generate_signer_key("opsgate.test/ledger"))
    for i in range(3):
        ledger.append_sync("intent", {"request_id": f"r{i}"})
    assert create_checkpoint(engine, signer, "opsgate.test/ledger", clock) is not None
    async with aiohttp.ClientSession() as session:
        anchor = DiscordAnchor(SecretStr(url), session)
        started = time.monotonic()
        assert await publish(engine, anchor, clock) == 3
        assert time.monotonic() - started >= 0.4  # two 429s, 0.2 s each (retry_after wins)
        assert [wait for _, wait in fake.posts] == ["true"] * 3
        ids = discord_references(engine)
        assert ids == list(fake.messages)
        notes = [await anchor.fetch(i) for i in ids]
    assert notes[0].note.startswith(b"opsgate.test/ledger\n3\n")
    report = verify(engine, verifier=signer.verifier(), anchored=notes)
    assert report.ok and report.anchored_size == 3


async def test_discord_keeps_rate_limiting(discord: tuple[FakeDiscord, str]) -> None:
    fake, url = discord
    fake.rate_limited = 100
    async with aiohttp.ClientSession() as session:
        anchor = DiscordAnchor(SecretStr(url), session, max_attempts=3)
        with pytest.raises(AnchorError, match="kept answering 429"):
            await anchor.publish(1, b"note\n")
    assert len(fake.posts) == 3


async def test_unknown_message_is_an_anchor_error(discord: tuple[FakeDiscord, str]) -> None:
    _, url = discord
    async with aiohttp.ClientSession() as session:
        with pytest.raises(AnchorError, match="HTTP 404"):
            await DiscordAnchor(SecretStr(url), session).fetch("999")
