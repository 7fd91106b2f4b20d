"""External anchors: copies of every signed checkpoint kept outside the database, and read back
from the anchor itself (never through the database, which a restore can roll back).

- :class:`DirectoryAnchor`: one file per checkpoint, ``<size, 20 digits>.checkpoint``, created
  with ``O_CREAT | O_EXCL`` and fsynced (file and directory), never rewritten. Point it at storage
  the database's administrators cannot rewrite (another host, a WORM mount, a synced folder).
  Read back by listing the directory.
- :class:`DiscordAnchor`: the note posted to a Discord webhook (``POST {webhook}?wait=true``,
  Discord "Execute Webhook"), which returns the message object; its ``id`` is stored. HTTP 429 is
  retried after ``retry_after`` seconds from the JSON body or the ``Retry-After`` header. Read back
  from the channel itself: "Get Webhook with Token" (``GET {webhook}``) names the webhook's channel,
  "Get Channel Messages" (``GET {api}/channels/{channel}/messages?limit=100&before=ID``, a bot token
  with Read Message History) lists it newest first; the messages this webhook posted are the
  anchor. Every call has a deadline (``timeout_s``).

An accepted rollback (``opsgate ledger accept-rollback``) is recorded in the anchor too: the
directory moves its larger checkpoints into ``rolled-back-<label>/``; Discord gets a marker
message, and checkpoints posted before it that are larger than its size are no longer current.

:func:`publish` posts every stored checkpoint an anchor has not seen yet, records the reference in
``ledger_anchor_records`` and advances ``ledger_anchor_state.anchored_size`` only by
compare-and-swap, so concurrent publishers never move it backwards.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from pydantic import SecretStr
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from opsgate.clock import Clock
from opsgate.ledger.errors import AnchorError
from opsgate.ledger.models import (
    ledger_anchor_records,
    ledger_anchor_state,
    ledger_checkpoints,
    stored_bytes,
    stored_int,
)
from opsgate.ledger.verify import AnchoredNote
from opsgate.store.db import begin_write

MAX_PER_RUN = 100
PAGE = 100
"""Messages per "Get Channel Messages" call (Discord's maximum)."""
_FILE_RE = re.compile(r"(\d{20})\.checkpoint\Z")
_FENCE = "```"
_CHECKPOINT_RE = re.compile(r"opsgate ledger checkpoint (\d{1,19})\n```\n(.*?)```\Z", re.S)
_ROLLBACK_RE = re.compile(r"opsgate ledger rollback accepted: checkpoints above (\d{1,19}) entries are rolled back")


class Anchor(Protocol):
    """Where checkpoints are copied: ``name`` is stored with each record. Everything an anchor
    reports is read from the anchor itself."""

    name: str

    async def publish(self, size: int, note: bytes) -> str:
        """Store ``note`` (the checkpoint of ``size``); return a reference to the copy."""
        ...

    async def notes(self) -> list[AnchoredNote]:
        """Every current checkpoint the anchor holds, oldest first."""
        ...

    async def held(self) -> int:
        """The largest size the anchor holds as current; 0 when it holds nothing yet."""
        ...

    async def accept_rollback(self, size: int, anchored: int, label: str) -> None:
        """Record that checkpoints above ``size`` (up to ``anchored``) are rolled back: they stop
        being current, and are kept."""
        ...


class DirectoryAnchor:
    """Append-only directory of checkpoint files (see the module docstring)."""

    name = "directory"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def publish(self, size: int, note: bytes) -> str:
        """Write ``<size>.checkpoint`` once; an identical existing file is accepted, a different
        one raises AnchorError (an anchor is never rewritten). Returns the file name."""
        return await asyncio.to_thread(self._write, size, note)

    def _write(self, size: int, note: bytes) -> str:
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / f"{size:020d}.checkpoint"
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if target.read_bytes() != note:
                raise AnchorError(f"{target} exists with different contents") from None
            return target.name
        with os.fdopen(fd, "wb") as handle:
            handle.write(note)
            handle.flush()
            os.fsync(handle.fileno())
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return target.name

    def read(self) -> list[AnchoredNote]:
        """Every checkpoint file in the directory, by size, each with the size its name claims.
        OSError if it cannot be read."""
        files = sorted((p, int(m.group(1))) for p in self.path.iterdir() if (m := _FILE_RE.match(p.name)))
        return [AnchoredNote(str(p), p.read_bytes(), self.name, size) for p, size in files]

    async def notes(self) -> list[AnchoredNote]:
        """:meth:`read` in a thread."""
        return await asyncio.to_thread(self.read)

    async def held(self) -> int:
        """:meth:`anchored_size` in a thread."""
        return await asyncio.to_thread(self.anchored_size)

    async def accept_rollback(self, size: int, anchored: int, label: str) -> None:
        """:meth:`archive_above` in a thread."""
        await asyncio.to_thread(self.archive_above, size, label)

    def anchored_size(self) -> int:
        """The largest size anchored here, read from the directory itself (never from the
        database, which a restore can roll back); 0 when it holds nothing yet."""
        if not self.path.exists():
            return 0
        return max((int(m.group(1)) for p in self.path.iterdir() if (m := _FILE_RE.match(p.name))), default=0)

    def archive_above(self, size: int, label: str) -> list[str]:
        """Move every checkpoint larger than ``size`` into ``rolled-back-<label>/`` (kept, never
        deleted: they prove what was lost); returns the moved file names."""
        moved = sorted(p for p in self.path.iterdir() if (m := _FILE_RE.match(p.name)) and int(m.group(1)) > size)
        if moved:
            archive = self.path / f"rolled-back-{label}"
            archive.mkdir()
            for p in moved:
                p.rename(archive / p.name)
        return [p.name for p in moved]


class DiscordAnchor:
    """A Discord webhook as an anchor (see the module docstring). ``webhook_url`` is
    ``https://discord.com/api/webhooks/{id}/{token}``; it and ``bot_token`` are secrets and never
    logged. The API base for the channel read is the webhook URL's part before ``/webhooks/``.
    Reading needs ``bot_token`` (AnchorError without it)."""

    name = "discord"

    def __init__(
        self,
        webhook_url: SecretStr,
        session: aiohttp.ClientSession,
        *,
        bot_token: SecretStr | None = None,
        max_attempts: int = 5,
        max_wait_s: float = 60.0,
        timeout_s: float = 10.0,
    ) -> None:
        self._url = webhook_url.get_secret_value().rstrip("/")
        self._api = self._url.split("/webhooks/", 1)[0]
        self._bot = bot_token
        self._session = session
        self._max_attempts = max_attempts
        self._max_wait_s = max_wait_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def publish(self, size: int, note: bytes) -> str:
        """Post the note in a code block; return the message id. AnchorError on failure."""
        return await self._post(f"opsgate ledger checkpoint {size}\n{_FENCE}\n{note.decode()}{_FENCE}")

    async def notes(self) -> list[AnchoredNote]:
        """Every current checkpoint this webhook posted, oldest first, read from the channel (all
        pages). AnchorError when the channel cannot be read."""
        found = [note async for page in self._current_pages() for _, note in page]
        return found[::-1]

    async def held(self) -> int:
        """The largest current size, from the newest page that holds one of this webhook's
        checkpoints (concurrent publishers may post sizes slightly out of order); 0 when none."""
        async for page in self._current_pages():
            if page:
                return max(size for size, _ in page)
        return 0

    async def accept_rollback(self, size: int, anchored: int, label: str) -> None:
        """Post the marker message: checkpoints posted before it above ``size`` stop being current
        (they stay in the channel)."""
        await self._post(f"opsgate ledger rollback accepted: checkpoints above {size} entries are rolled back "
                         f"(the anchor held {anchored}; accepted {label}; the reason is in the ledger)")

    async def _post(self, content: str) -> str:
        body = {"content": content, "allowed_mentions": {"parse": []}}
        message = await self._call("POST", self._url, dict, params={"wait": "true"}, json=body)
        message_id = message.get("id")
        if not isinstance(message_id, str):
            raise AnchorError("Discord answered without a message id")
        return message_id

    async def _current_pages(self) -> AsyncIterator[list[tuple[int, AnchoredNote]]]:
        """This webhook's current checkpoints, page by page, newest first: a checkpoint is
        current unless a rollback marker posted after it names a smaller size."""
        floor: int | None = None
        async for page in self._pages():
            current = []
            for webhook_message in page:
                content = webhook_message.get("content")
                if not isinstance(content, str):
                    continue
                if marker := _ROLLBACK_RE.match(content):
                    floor = int(marker[1]) if floor is None else min(floor, int(marker[1]))
                elif (found := _CHECKPOINT_RE.match(content)) and (floor is None or int(found[1]) <= floor):
                    current.append((int(found[1]), AnchoredNote(f"discord:{webhook_message.get('id')}",
                                                                 found[2].encode(), self.name, int(found[1]))))
            yield current

    async def _pages(self) -> AsyncIterator[list[dict[str, Any]]]:
        """The webhook's own messages in its channel, newest first, one list per API page."""
        if self._bot is None:
            raise AnchorError("reading the Discord anchor needs OPSGATE_LEDGER_DISCORD_BOT_TOKEN "
                              "(a bot with Read Message History in the webhook's channel)")
        hook = await self._call("GET", self._url, dict)
        channel, webhook_id = hook.get("channel_id"), hook.get("id")
        if not isinstance(channel, str) or not channel.isdigit() or not isinstance(webhook_id, str):
            raise AnchorError("Discord's webhook object names no channel")
        headers = {"Authorization": f"Bot {self._bot.get_secret_value()}"}
        before: int | None = None
        while True:
            params = {"limit": str(PAGE), **({"before": str(before)} if before is not None else {})}
            page = await self._call("GET", f"{self._api}/channels/{channel}/messages", list,
                                    params=params, headers=headers)
            messages = [m for m in page if isinstance(m, dict)]
            yield [m for m in messages if m.get("webhook_id") == webhook_id]
            ids = [int(m["id"]) for m in messages if isinstance(m.get("id"), str) and m["id"].isdigit()]
            if len(page) < PAGE or not ids:
                return
            if before is not None and min(ids) >= before:
                raise AnchorError("Discord's message pages did not advance")
            before = min(ids)

    async def _call(self, method: str, url: str, shape: type, **kwargs: Any) -> Any:
        for _ in range(self._max_attempts):
            try:
                async with self._session.request(method, url, timeout=self._timeout, **kwargs) as response:
                    payload = await response.json(content_type=None)
                    if response.status == 429:
                        await asyncio.sleep(self._retry_after(payload, response.headers))
                        continue
                    if response.status >= 300 or not isinstance(payload, shape):
                        raise AnchorError(f"Discord answered HTTP {response.status}")
                    return payload
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise AnchorError(f"Discord call failed: {type(exc).__name__}") from None
        raise AnchorError("Discord kept answering 429")

    def _retry_after(self, payload: Any, headers: Any) -> float:
        wait = payload.get("retry_after") if isinstance(payload, dict) else None
        if not isinstance(wait, int | float):
            try:
                wait = float(headers.get("Retry-After", "1"))
            except ValueError:
                wait = 1.0
        if wait != wait:  # NaN
            wait = 1.0
        return min(max(float(wait), 0.0), self._max_wait_s)


async def publish(engine: Engine, anchor: Anchor, clock: Clock) -> int:
    """Post to ``anchor`` every stored checkpoint larger than its anchored size (oldest first, at
    most :data:`MAX_PER_RUN`); return the anchored size afterwards. Stops early when another
    process advanced the size first (its compare-and-swap won)."""
    anchored = await asyncio.to_thread(_anchored_size, engine, anchor.name)
    for size, note in await asyncio.to_thread(_pending, engine, anchored):
        reference = await anchor.publish(size, note)
        if not await asyncio.to_thread(
            _record, engine, anchor.name, anchored, size, reference, clock.now()
        ):
            break
        anchored = size
    return anchored


def _anchored_size(engine: Engine, name: str) -> int:
    with begin_write(engine) as conn:
        size = conn.execute(
            select(ledger_anchor_state.c.anchored_size).where(ledger_anchor_state.c.anchor == name)
        ).scalar()
        if size is None:
            try:
                with conn.begin_nested():
                    conn.execute(insert(ledger_anchor_state).values(anchor=name, anchored_size=0))
            except IntegrityError:  # created concurrently
                return _anchored_size(engine, name)
            return 0
        return stored_int(size, f"ledger_anchor_state row anchor={name}, column anchored_size")


def recorded_size(engine: Engine, name: str) -> int:
    """The size the database records as anchored at anchor ``name`` (0 when none): read only."""
    with engine.connect() as conn:
        size = conn.execute(
            select(ledger_anchor_state.c.anchored_size).where(ledger_anchor_state.c.anchor == name)
        ).scalar()
    where = f"ledger_anchor_state row anchor={name}, column anchored_size"
    return 0 if size is None else stored_int(size, where)


def _pending(engine: Engine, anchored: int) -> list[tuple[int, bytes]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(ledger_checkpoints.c.size, ledger_checkpoints.c.note)
            .where(ledger_checkpoints.c.size > anchored)
            .order_by(ledger_checkpoints.c.size)
            .limit(MAX_PER_RUN)
        )
        where = "ledger_checkpoints row size={!r:.40}, column {}".format
        return [(stored_int(size, where(size, "size")), stored_bytes(note, where(size, "note")))
                for size, note in rows]


def _record(engine: Engine, name: str, old: int, size: int, reference: str, now: datetime) -> bool:
    """Record the copy and compare-and-swap the anchored size from ``old`` to ``size``."""
    with begin_write(engine) as conn:
        swapped = conn.execute(
            update(ledger_anchor_state)
            .where(ledger_anchor_state.c.anchor == name, ledger_anchor_state.c.anchored_size == old)
            .values(anchored_size=size)
        ).rowcount
        if swapped != 1:
            return False
        conn.execute(
            insert(ledger_anchor_records).values(
                anchor=name, size=size, reference=reference, created_at=now
            )
        )
    return True
