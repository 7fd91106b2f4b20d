"""The ``malformed`` fault: 200 answers a client cannot use, in three repeatable variants.

Variant 0 cuts the JSON body in half (a stream: one good event, then a ``data:`` line of broken
JSON); variant 1 drops the provider's required fields (a stream: cut after its first event, before
the final one); variant 2 is an empty body (an empty stream).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from opsgate.sandbox.sse import send_event, start_sse

Event = tuple[str | None, Any]
"""One SSE event: (``event:`` name or None, data as JSON-able value or raw string)."""


def malformed_json(
    body: dict[str, Any], required: tuple[str, ...], variant: int, headers: dict[str, str]
) -> web.Response:
    """A 200 ``application/json`` answer spoiled by ``variant`` (see the module docstring)."""
    text = json.dumps(body)
    if variant == 0:
        text = text[: len(text) // 2]
    elif variant == 1:
        text = json.dumps({k: v for k, v in body.items() if k not in required})
    else:
        text = ""
    return web.Response(status=200, text=text, content_type="application/json", headers=headers)


async def malformed_stream(
    request: web.Request, events: list[Event], variant: int, headers: dict[str, str]
) -> web.StreamResponse:
    """A 200 event stream spoiled by ``variant`` (see the module docstring)."""
    response = await start_sse(request, headers)
    if variant in (0, 1) and events:
        name, data = events[0]
        await send_event(response, data, name)
    if variant == 0:
        await send_event(response, '{"truncated": ', events[0][0] if events else None)
    await response.write_eof()
    return response
