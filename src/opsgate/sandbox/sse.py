"""Server-sent events (WHATWG HTML "Server-sent events") for the streaming sandbox answers."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


async def start_sse(
    request: web.Request, headers: dict[str, str] | None = None
) -> web.StreamResponse:
    """Send 200 with ``Content-Type: text/event-stream`` and return the open response."""
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            **(headers or {}),
        },
    )
    await response.prepare(request)
    return response


async def send_event(response: web.StreamResponse, data: Any, event: str | None = None) -> None:
    """Write one event: an optional ``event:`` line and one ``data:`` line (JSON unless ``data``
    is already a string), then a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    await response.write(f"{head}data: {payload}\n\n".encode())
