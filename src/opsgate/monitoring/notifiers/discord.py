"""Discord execute-webhook notifier (``POST {webhook}?wait=true``, Discord API docs, "Execute
Webhook"): ``wait=true`` makes Discord confirm the message was saved (200 with the message), so a
failed save is an error, not silence. ``content`` is at most 2,000 characters: longer text is
split into messages, each starting with a ``[i/n]`` marker, that reassemble to the whole text.
``allowed_mentions: {"parse": []}`` stops alert text from pinging anyone. Embeds are not used.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from opsgate.monitoring.notifiers import Notification, check_http

CONTENT_LIMIT = 2000
MARKER = "[{i}/{n}] "


def split_content(text: str, limit: int = CONTENT_LIMIT) -> list[str]:
    """``text`` as one message, or as messages of ≤ ``limit`` characters each prefixed with
    ``[i/n] `` (stripping the markers and joining gives ``text`` back)."""
    if len(text) <= limit:
        return [text]
    n = 1
    while True:  # the marker's width depends on the number of parts
        room = limit - len(MARKER.format(i=n, n=n))
        parts = [text[k:k + room] for k in range(0, len(text), room)]
        if len(parts) <= n:
            return [MARKER.format(i=i, n=len(parts)) + p for i, p in enumerate(parts, 1)]
        n = len(parts)


class DiscordNotifier:
    """Posts to one webhook URL (``https://discord.com/api/webhooks/{id}/{token}``) over ``session``."""

    channel = "discord"

    def __init__(self, session: aiohttp.ClientSession, webhook_url: str) -> None:
        self.session = session
        self.url = webhook_url

    def render(self, note: Notification, recipient: str) -> list[dict[str, Any]]:
        """One ``{"content", "allowed_mentions"}`` body per message."""
        return [{"content": part, "allowed_mentions": {"parse": []}} for part in split_content(note.text())]

    async def send(self, payload: dict[str, Any]) -> None:
        """POST one message; :class:`DeliveryError` on anything but 200/204."""
        async with self.session.post(self.url, params={"wait": "true"}, json=payload) as resp:
            await check_http(resp, ok=(200, 204))
