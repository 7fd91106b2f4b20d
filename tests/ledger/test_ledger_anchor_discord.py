"""The Discord anchor against a loopback stand-in speaking Discord's API (Discord is not
reachable here): ``POST /api/webhooks/{id}/{token}?wait=true`` answers the message object,
``GET /api/webhooks/{id}/{token}`` the webhook object (its channel), ``.../messages/{id}`` one
message, and
``GET /api/channels/{channel}/messages?limit=&before=`` (a bot token) lists the channel newest
first; a 429 carries ``retry_after`` and ``Retry-After``. The anchor is read from the channel
itself, so a database restored from an older backup cannot hide its later checkpoints."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr
from sqlalchemy import Engine
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.clock import ManualClock
from opsgate.ledger.anchors import DiscordAnchor, publish
from opsgate.ledger.checkpoint import Signer, generate_signer_key
from opsgate.ledger.errors import AnchorError
from opsgate.ledger.service import create_checkpoint
from opsgate.ledger.verify import verify
from opsgate.ledger.writer import Ledger
from opsgate.store.db import make_engine, upgrade

WEBHOOK_ID, TOKEN, CHANNEL = "112233445566778899", "tok-" + "x" * 60, "998877665544332211"
BOT = "bot-" + "y" * 40  # a test-time stand-in, not a real token  # pragma: allowlist secret


class FakeDiscord:
    """One channel kept in memory; the webhook posts into it. The first ``rate_limited`` posts
    answer 429. ``chatter(n)`` adds ``n`` messages from a person (not the webhook)."""

    def __init__(self, rate_limited: int = 0) -> None:
        self.messages: dict[str, dict[str, object]] = {}
        self.rate_limited = rate_limited
        self.posts: list[tuple[float, str | None]] = []
        self.pages = 0

    def app(self) -> web.Application:
        app = web.Application()
        base = f"/api/webhooks/{WEBHOOK_ID}/{TOKEN}"
        app.router.add_post(base, self.execute)
        app.router.add_get(base, self.webhook)
        app.router.add_get(base + "/messages/{message_id}", self.get)
        app.router.add_get("/api/channels/{channel}/messages", self.channel_messages)
        return app

    def _add(self, content: str, webhook: bool) -> dict[str, object]:
        message: dict[str, object] = {
            "id": str(1_200_000_000_000_000_000 + len(self.messages)), "type": 0, "content": content,
            "channel_id": CHANNEL, "author": {"id": WEBHOOK_ID if webhook else "42", "username": "x"}}
        if webhook:
            message["webhook_id"] = WEBHOOK_ID
        self.messages[str(message["id"])] = message
        return message

    def chatter(self, n: int, content: str = "hello") -> None:
        for _ in range(n):
            self._add(content, webhook=False)

    async def execute(self, request: web.Request) -> web.Response:
        self.posts.append((time.monotonic(), request.query.get("wait")))
        if self.rate_limited:
            self.rate_limited -= 1
            return web.json_response(
                {"message": "You are being rate limited.", "retry_after": 0.2, "global": False},
                status=429, headers={"Retry-After": "1", "X-RateLimit-Scope": "user"},
            )
        message = self._add((await request.json())["content"], webhook=True)
        return web.json_response(message if request.query.get("wait") == "true" else None,
                                 status=200 if request.query.get("wait") == "true" else 204)

    async def webhook(self, request: web.Request) -> web.Response:
        return web.json_response({"id": WEBHOOK_ID, "type": 1, "channel_id": CHANNEL, "guild_id": "7",
                                  "name": "ledger", "token": TOKEN})

    async def get(self, request: web.Request) -> web.Response:
        message = self.messages.get(request.match_info["message_id"])
        if message is None:
            return web.json_response({"message": "Unknown Message", "code": 10008}, status=404)
        return web.json_response(message)

    async def channel_messages(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bot {BOT}":
            return web.json_response({"message": "401: Unauthorized", "code": 0}, status=401)
        if request.match_info["channel"] != CHANNEL:
            return web.json_response({"message": "Unknown Channel", "code": 10003}, status=404)
        self.pages += 1
        limit = min(max(int(request.query.get("limit", "50")), 1), 100)
        before = int(request.query.get("before", str(1 << 63)))
        newest_first = sorted((m for m in self.messages.values() if int(str(m["id"])) < before),
                              key=lambda m: -int(str(m["id"])))
        return web.json_response(newest_first[:limit])


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


@contextmanager
def discord_in_thread(fake: FakeDiscord) -> Iterator[str]:
    """Serve ``fake`` from a thread (for CLI commands, which run their own event loop)."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(fake.app())
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/api/webhooks/{WEBHOOK_ID}/{TOKEN}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.run_until_complete(runner.cleanup())
        loop.close()


async def test_checkpoints_posted_with_wait_and_429_honoured(
    engine: Engine, ledger: Ledger, clock: ManualClock, discord: tuple[FakeDiscord, str]
) -> None:
    fake, url = discord
    signer = Signer(generate_signer_key("opsgate.test/ledger"))
    for i in range(3):
        ledger.append_sync("intent", {"request_id": f"r{i}"})
    assert create_checkpoint(engine, signer, "opsgate.test/ledger", clock) is not None
    async with aiohttp.ClientSession() as session:
        anchor = DiscordAnchor(SecretStr(url), session, bot_token=SecretStr(BOT))
        started = time.monotonic()
        assert await publish(engine, anchor, clock) == 3
        assert time.monotonic() - started >= 0.4  # two 429s, 0.2 s each (retry_after wins)
        assert [wait for _, wait in fake.posts] == ["true"] * 3
        fake.chatter(150)  # the channel's other messages: paged through, never taken for notes
        notes = await anchor.notes()
        assert [n.source for n in notes] == [f"discord:{i}" for i in list(fake.messages)[:1]]
        assert await anchor.held() == 3
    assert fake.pages >= 2 + 2
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


async def test_a_channel_it_cannot_read_is_an_anchor_error(discord: tuple[FakeDiscord, str]) -> None:
    _, url = discord
    async with aiohttp.ClientSession() as session:
        with pytest.raises(AnchorError, match="HTTP 401"):
            await DiscordAnchor(SecretStr(url), session, bot_token=SecretStr("bot-wrong")).notes()
        with pytest.raises(AnchorError, match="BOT_TOKEN"):
            await DiscordAnchor(SecretStr(url), session).held()


def _grow(url: str, entries: int) -> None:
    """Append ``entries`` intents, then `opsgate ledger checkpoint` (signs and posts to Discord)."""
    engine = make_engine(url)
    with Ledger(engine, ManualClock()) as ledger:
        for i in range(entries):
            ledger.append_sync("intent", {"request_id": f"req-{i}", "user_id": "alice"})
    engine.dispose()
    result = CliRunner().invoke(app, ["ledger", "checkpoint"])
    assert result.exit_code == 0, result.output


def _copy(source: Path, target: Path) -> None:
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


def test_a_restored_database_cannot_blind_the_discord_anchor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the ids used to come from ``ledger_anchor_records``, which the restore rolled
    back, so ``verify --discord`` said OK and the next checkpoint forked the log."""
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    upgrade(url)
    fake = FakeDiscord()
    with discord_in_thread(fake) as webhook:
        for key, value in {"OPSGATE_DATABASE_URL": url, "OPSGATE_LEDGER_SIGNING_KEY_FILE": str(tmp_path / "k"),
                           "OPSGATE_LEDGER_DISCORD_WEBHOOK_URL": webhook,
                           "OPSGATE_LEDGER_DISCORD_BOT_TOKEN": BOT}.items():
            monkeypatch.setenv(key, value)
        _grow(url, 4)
        _copy(db, tmp_path / "backup.db")
        _grow(url, 4)
        _copy(tmp_path / "backup.db", db)  # the restore: 4 entries, Discord holds 8

        runner = CliRunner()
        verified = runner.invoke(app, ["ledger", "verify", "--discord"])
        assert (verified.exit_code, verified.output.split(":")[0]) == (1, "FAIL seq=4 reason=rolled_back")
        _grow_refused = runner.invoke(app, ["ledger", "checkpoint"])
        assert _grow_refused.exit_code == 1 and "discord anchor holds a checkpoint of 8" in _grow_refused.output
        assert len([m for m in fake.messages.values() if "webhook_id" in m]) == 2  # nothing forked

        accepted = runner.invoke(app, ["ledger", "accept-rollback", "--reason", "restored", "--actor", "oncall"])
        assert accepted.exit_code == 0, accepted.output
        assert "anchored size 8 lost 4 entries" in accepted.output
        marker = list(fake.messages.values())[-1]["content"]
        assert str(marker).startswith("opsgate ledger rollback accepted: checkpoints above 4 entries")
        signed = runner.invoke(app, ["ledger", "checkpoint"])
        assert (signed.exit_code, signed.output.strip()) == (0, "checkpoint signed: size=5")
        verified = runner.invoke(app, ["ledger", "verify", "--discord"])
        assert verified.exit_code == 0 and "anchored=5" in verified.output, verified.output
