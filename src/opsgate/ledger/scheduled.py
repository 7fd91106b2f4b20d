"""The periodic checkpoint job: sign a checkpoint every N entries or T seconds, then anchor it.

:class:`Checkpointer` runs as an asyncio task in ``opsgate serve`` (and can run in the worker).
Every ``poll_s`` it reads the log size; when ``every`` entries are new, or ``interval_s`` has
passed and any entry is new, it signs a checkpoint (``service.create_checkpoint``, in a thread)
and then posts every checkpoint an anchor has not seen yet (``anchors.publish``). Several
replicas may run it at once: the conditional insert and the anchors' compare-and-swap keep them
from signing a size twice or moving an anchored size backwards. A failing round is logged and
retried at the next poll; it never stops the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import aiohttp
from pydantic import SecretStr
from sqlalchemy import Engine

from opsgate.clock import Clock
from opsgate.config import Settings
from opsgate.ledger.anchors import Anchor, DirectoryAnchor, DiscordAnchor, publish, recorded_size
from opsgate.ledger.checkpoint import Signer, Verifier, load_key_file, write_key_file
from opsgate.ledger.errors import LedgerError, LedgerRolledBack, StoredValueError
from opsgate.ledger.service import StoredCheckpoint, create_checkpoint, latest_checkpoint, log_size
from opsgate.ledger.verify import AnchoredNote, Finding, VerifyReport, failed, recorded_anchors, verify
from opsgate.ledger.writer import Ledger

log = logging.getLogger(__name__)


class Checkpointer:
    """Signs and anchors checkpoints (see the module docstring). ``start()`` / ``await stop()``,
    or ``async with checkpointer:``."""

    def __init__(
        self,
        engine: Engine,
        signer: Signer,
        origin: str,
        clock: Clock,
        anchors: Sequence[Anchor] = (),
        *,
        every: int = 1000,
        interval_s: float = 60.0,
        poll_s: float = 1.0,
    ) -> None:
        self._engine, self._signer, self._origin, self._clock = engine, signer, origin, clock
        self._anchors = list(anchors)
        self._every, self._interval_s, self._poll_s = every, interval_s, min(poll_s, interval_s)
        self._last_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    async def run_once(self, *, force: bool = False) -> StoredCheckpoint | None:
        """One round: checkpoint if due (or ``force`` and anything is new), then anchor.
        Before signing, every anchor is read: :class:`LedgerRolledBack` when one holds more than
        the log (signing then would fork the log), :class:`AnchorError` when one cannot be read."""
        checkpoint = None
        if force or await asyncio.to_thread(self._due):
            await check_not_rolled_back(self._engine, self._anchors)
            checkpoint = await asyncio.to_thread(
                create_checkpoint, self._engine, self._signer, self._origin, self._clock
            )
            self._last_at = time.monotonic()
        for anchor in self._anchors:
            await publish(self._engine, anchor, self._clock)
        return checkpoint

    def _due(self) -> bool:
        latest = latest_checkpoint(self._engine)
        new = log_size(self._engine) - (latest.size if latest else 0)
        elapsed = time.monotonic() - self._last_at
        return new >= self._every or (new > 0 and elapsed >= self._interval_s)

    def start(self) -> None:
        """Start the polling task on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="ledger-checkpoints")

    async def stop(self) -> None:
        """Cancel the polling task and wait for it."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ledger checkpoint round failed; retrying at the next poll")
            await asyncio.sleep(self._poll_s)


async def check_not_rolled_back(engine: Engine, anchors: Sequence[Anchor]) -> None:
    """Raise :class:`LedgerRolledBack` when an anchor holds a checkpoint larger than the log (the
    database was restored from an older backup). Each anchor's size is read from the anchor
    itself; :class:`AnchorError` when one cannot be read."""
    size = await asyncio.to_thread(log_size, engine)
    for anchor in anchors:
        if (held := await anchor.held()) > size:
            raise LedgerRolledBack(
                f"the {anchor.name} anchor holds a checkpoint of {held} entries but the log has {size}: "
                f"the database was rolled back; run `opsgate ledger accept-rollback` to sign again",
                anchored_size=held, log_size=size)


async def accept_rollback(engine: Engine, ledger: Ledger, anchors: Sequence[Anchor], clock: Clock,
                          reason: str, actor: str) -> tuple[int, int]:
    """Accept that the log lost ``anchored - size`` anchored entries (``anchored``: the largest
    size any anchor holds): append a ``ledger.rollback_accepted`` entry naming both sizes, then
    record the rollback in every anchor holding more (the directory archives its larger
    checkpoints, Discord gets a marker message) so signing can resume. Returns
    ``(anchored, size)``. :class:`LedgerError` when the log is not behind any anchor."""
    size = await asyncio.to_thread(log_size, engine)
    held = {anchor.name: await anchor.held() for anchor in anchors}
    anchored = max(held.values(), default=0)
    if anchored <= size:
        raise LedgerError(f"nothing to accept: the log ({size} entries) is not behind the anchors ({anchored})")
    await ledger.append("ledger.rollback_accepted", {
        "anchored_size": anchored, "log_size": size, "lost_entries": anchored - size,
        "reason": reason[:500], "actor": actor[:128]})
    label = clock.now().strftime("%Y%m%dT%H%M%SZ")
    for anchor in anchors:
        if held[anchor.name] > size:
            await anchor.accept_rollback(size, held[anchor.name], label)
    return anchored, size


def signer_for(settings: Settings, *, create: bool) -> Signer:
    """Load the signing key from ``settings.ledger_signing_key_file``; with ``create``, generate
    it first when missing (the embedded SQLite default). OSError / CheckpointError otherwise."""
    path = Path(settings.ledger_signing_key_file)
    if create and not path.exists():
        try:
            signer = write_key_file(path, settings.ledger_origin)
        except FileExistsError:  # another process created it at the same moment
            return load_key_file(path)
        log.warning("generated a new ledger signing key at %s (mode 0600); back it up", path)
        return signer
    return load_key_file(path)


def verify_configured(settings: Settings, engine: Engine, *, anchor_dir: Path | None = None,
                      verifier: Verifier | None = None) -> VerifyReport:
    """The one ledger verification that ``opsgate ledger verify`` and the worker's periodic check
    both run: signatures checked with ``verifier`` (default: the signing key file's, when it
    exists) and the checkpoints read back from every configured anchor itself — the directory
    (``anchor_dir``, default ``settings.ledger_anchor_dir``) and the Discord channel — so a
    rollback or truncation of the database below an anchored size fails (``rolled_back``), and
    a checkpoint the database records as posted to one of them that the anchor no longer holds
    (a file deleted or replaced) fails ``anchor_mismatch``.
    Call it outside an event loop (Discord is read with ``asyncio.run``). Raises what
    :func:`verify`, the anchors and reading the key file raise."""
    if verifier is None and Path(settings.ledger_signing_key_file).exists():
        verifier = signer_for(settings, create=False).verifier()
    try:  # before the anchors: a checkpoint published meanwhile is in the anchor, not missing
        recorded = recorded_anchors(engine)
    except StoredValueError as exc:
        return failed(Finding(0, "bad_type", exc.detail))
    directory = anchor_dir or settings.ledger_anchor_dir
    notes = _directory_notes(engine, Path(directory)) if directory is not None else []
    read = [DirectoryAnchor.name] if directory is not None else []
    if settings.ledger_discord_webhook_url is not None:
        notes += asyncio.run(_discord_notes(settings))
        read.append(DiscordAnchor.name)
    if notes and verifier is None:
        raise LedgerError("anchored checkpoints need the verifier key (the signing key file)")
    return verify(engine, verifier=verifier, anchored=notes,
                  recorded={name: recorded.get(name, frozenset()) for name in read})


def _directory_notes(engine: Engine, path: Path) -> list[AnchoredNote]:
    """The directory anchor's checkpoints. The first anchored checkpoint creates the directory:
    before it, a missing directory holds nothing, as long as the database records nothing
    anchored there; otherwise a missing directory is an error (FileNotFoundError)."""
    anchor = DirectoryAnchor(path)
    if not path.exists() and recorded_size(engine, anchor.name) == 0:
        return []
    return anchor.read()


async def _discord_notes(settings: Settings) -> list[AnchoredNote]:
    async with aiohttp.ClientSession() as session:
        return [note for anchor in anchors_for(settings, session) if isinstance(anchor, DiscordAnchor)
                for note in await anchor.notes()]


async def check_configured(settings: Settings, engine: Engine) -> None:
    """:func:`check_not_rolled_back` against every anchor configured in ``settings``."""
    async with aiohttp.ClientSession() as session:
        await check_not_rolled_back(engine, anchors_for(settings, session))


def anchors_for(settings: Settings, session: aiohttp.ClientSession | None) -> list[Anchor]:
    """The anchors configured in ``settings`` (a directory and/or a Discord webhook; the webhook
    needs the shared aiohttp ``session``; its URL and bot token are read through
    :meth:`~opsgate.config.Settings.secret`, ``ConfigError`` for an unresolved ``op://``
    reference)."""
    anchors: list[Anchor] = []
    if settings.ledger_anchor_dir is not None:
        anchors.append(DirectoryAnchor(Path(settings.ledger_anchor_dir)))
    if (webhook := settings.secret("ledger_discord_webhook_url")) is not None and session is not None:
        bot = settings.secret("ledger_discord_bot_token")
        anchors.append(DiscordAnchor(SecretStr(webhook), session, bot_token=SecretStr(bot) if bot is not None else None))
    return anchors


def checkpointer_for(
    settings: Settings, engine: Engine, clock: Clock, session: aiohttp.ClientSession | None
) -> Checkpointer | None:
    """A :class:`Checkpointer` from ``settings``, or None (logged) when no signing key can be
    had: a missing key is generated only for SQLite, the embedded default."""
    try:
        signer = signer_for(settings, create=engine.dialect.name == "sqlite")
    except (OSError, LedgerError) as exc:
        log.error("ledger checkpoints are OFF: no signing key (%s)", exc)
        return None
    return Checkpointer(
        engine,
        signer,
        settings.ledger_origin,
        clock,
        anchors_for(settings, session),
        every=settings.ledger_checkpoint_every,
        interval_s=settings.ledger_checkpoint_interval_s,
    )
