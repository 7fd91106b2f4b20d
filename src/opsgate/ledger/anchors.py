"""External anchors: copies of every signed checkpoint kept outside the database.

- :class:`DirectoryAnchor`: one file per checkpoint, ``<size, 20 digits>.checkpoint``, created
  with ``O_CREAT | O_EXCL`` and fsynced (file and directory), never rewritten. Point it at storage
  the database's administrators cannot rewrite (another host, a WORM mount, a synced folder).
- :class:`DiscordAnchor`: the note posted to a Discord webhook (``POST {webhook}?wait=true``,
  Discord "Execute Webhook"), which returns the message object; its ``id`` is stored. HTTP 429 is
  retried after ``retry_after`` seconds from the JSON body or the ``Retry-After`` header. The note
  is read back with ``GET {webhook}/messages/{id}`` ("Get Webhook Message").

:func:`publish` posts every stored checkpoint an anchor has not seen yet, records the reference in
``ledger_anchor_records`` and advances ``ledger_anchor_state.anchored_size`` only by
compare-and-swap, so concurrent publishers never move it backwards.
"""

from __future__ import annotations

import asyncio
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from pydantic import SecretStr
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from opsgate.clock import Clock
from opsgate.ledger.errors import AnchorError
from opsgate.ledger.models import ledger_anchor_records, ledger_anchor_state, ledger_checkpoints
from opsgate.ledger.verify import AnchoredNote

MAX_PER_RUN = 100
_FILE_RE = re.compile(r"(\d{20})\.checkpoint\Z")
_FENCE = "```"


class Anchor(Protocol):
    """Where checkpoints are copied: ``name`` is stored with each record."""

    name: str

    async def publish(self, size: int, note: bytes) -> str:
        """Store ``note`` (the checkpoint of ``size``); return a reference to the copy."""
        ...


class DirectoryAnchor:
    """Append-only directory of checkpoint files (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = "directory"

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
        """Every checkpoint file in the directory, by size. OSError if it cannot be read."""
        files = sorted(p for p in self.path.iterdir() if _FILE_RE.match(p.name))
        return [AnchoredNote(str(p), p.read_bytes()) for p in files]

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
    ``https://discord.com/api/webhooks/{id}/{token}``; it is a secret and never logged."""

    name = "discord"

    def __init__(
        self,
        webhook_url: SecretStr,
        session: aiohttp.ClientSession,
        *,
        max_attempts: int = 5,
        max_wait_s: float = 60.0,
    ) -> None:
        self._url = webhook_url.get_secret_value().rstrip("/")
        self._session = session
        self._max_attempts = max_attempts
        self._max_wait_s = max_wait_s

    async def publish(self, size: int, note: bytes) -> str:
        """Post the note in a code block; return the message id. AnchorError on failure."""
        content = f"opsgate ledger checkpoint {size}\n{_FENCE}\n{note.decode()}{_FENCE}"
        body = {"content": content, "allowed_mentions": {"parse": []}}
        message = await self._call("POST", self._url, params={"wait": "true"}, json=body)
        message_id = message.get("id")
        if not isinstance(message_id, str):
            raise AnchorError("Discord answered without a message id")
        return message_id

    async def fetch(self, message_id: str) -> AnchoredNote:
        """Read a posted checkpoint back by message id."""
        message = await self._call("GET", f"{self._url}/messages/{message_id}")
        content = message.get("content", "")
        _, _, rest = content.partition(f"{_FENCE}\n")
        note, _, _ = rest.partition(_FENCE)
        return AnchoredNote(f"discord:{message_id}", note.encode())

    async def _call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        for _ in range(self._max_attempts):
            try:
                async with self._session.request(method, url, **kwargs) as response:
                    payload = await response.json(content_type=None)
                    if response.status == 429:
                        await asyncio.sleep(self._retry_after(payload, response.headers))
                        continue
                    if response.status >= 300 or not isinstance(payload, dict):
                        raise AnchorError(f"Discord answered HTTP {response.status}")
                    return payload
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise AnchorError(f"Discord webhook call failed: {type(exc).__name__}") from None
        raise AnchorError("Discord kept answering 429")

    def _retry_after(self, payload: Any, headers: Any) -> float:
        wait = payload.get("retry_after") if isinstance(payload, dict) else None
        if not isinstance(wait, int | float):
            wait = float(headers.get("Retry-After", "1"))
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
    with engine.begin() as conn:
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
        return int(size)


def _pending(engine: Engine, anchored: int) -> list[tuple[int, bytes]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(ledger_checkpoints.c.size, ledger_checkpoints.c.note)
            .where(ledger_checkpoints.c.size > anchored)
            .order_by(ledger_checkpoints.c.size)
            .limit(MAX_PER_RUN)
        )
        return [(r[0], bytes(r[1])) for r in rows]


def _record(engine: Engine, name: str, old: int, size: int, reference: str, now: datetime) -> bool:
    """Record the copy and compare-and-swap the anchored size from ``old`` to ``size``."""
    with engine.begin() as conn:
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


def discord_references(engine: Engine) -> list[str]:
    """The Discord message ids recorded for published checkpoints, by size."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(ledger_anchor_records.c.reference)
            .where(ledger_anchor_records.c.anchor == DiscordAnchor.name)
            .order_by(ledger_anchor_records.c.size)
        )
        return [r[0] for r in rows]
