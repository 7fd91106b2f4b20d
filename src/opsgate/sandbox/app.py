"""The sandbox application: the three provider sandboxes on one port, plus control routes.

Routes (base URLs for clients in parentheses):

- ``POST /anthropic/v1/messages`` and ``/anthropic/v1/messages/count_tokens``
  (``http://HOST:PORT/anthropic``)
- ``POST /deepseek/chat/completions`` and ``/deepseek/v1/chat/completions``
  (``http://HOST:PORT/deepseek``)
- ``POST /gemini/v1beta/models/{model}:generateContent``, ``:streamGenerateContent`` and
  ``:countTokens`` (``http://HOST:PORT/gemini``)
- ``GET /_sandbox/stats``: ``{"faults": str, "providers": {name: {"requests": int,
  "statuses": {"200": int, ...}, "cancelled": int}}, "counts": {name: int}}``; token-count
  requests are in ``counts`` only; ``DELETE /_sandbox/stats`` resets it.
- ``GET /_sandbox/faults`` and ``POST /_sandbox/faults`` with ``{"profile": "..."}``: read or
  change the fault profile (400 ``{"error": ...}`` for an invalid profile), see
  :mod:`opsgate.sandbox.faults`.

With a :class:`~opsgate.sandbox.latency.LatencyModel` every provider answer carries its simulated
latency in a header instead of taking it (rehearsals, :mod:`opsgate.sandbox.latency`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from opsgate.sandbox import anthropic, deepseek, gemini
from opsgate.sandbox.faults import PROVIDERS, FaultProfileError, FaultState
from opsgate.sandbox.latency import LatencyModel
from opsgate.sandbox.state import STATE, SandboxState

COUNT_PATHS = ("/messages/count_tokens", ":countTokens")
"""How the token-count routes' paths end (Anthropic, Gemini)."""


def create_app(faults: str = "none", latency: LatencyModel | None = None) -> web.Application:
    """Build the sandbox application with the fault profile ``faults`` and, for rehearsals, the
    simulated ``latency`` its answers announce (None: no latency header).

    Raises :class:`opsgate.sandbox.faults.FaultProfileError` for an invalid profile.
    """
    app = web.Application(middlewares=[_count_requests])
    app[STATE] = SandboxState(faults=FaultState(faults))
    if latency is not None:
        app.on_response_prepare.append(latency.stamp)
    anthropic.add_routes(app)
    deepseek.add_routes(app)
    gemini.add_routes(app)
    app.router.add_get("/_sandbox/stats", _get_stats)
    app.router.add_delete("/_sandbox/stats", _reset_stats)
    app.router.add_get("/_sandbox/faults", _get_faults)
    app.router.add_post("/_sandbox/faults", _set_faults)
    return app


def stats_of(state: SandboxState) -> dict[str, Any]:
    """The statistics document served at ``GET /_sandbox/stats`` (shape in the module docstring)."""
    return {"faults": state.faults.profile.text, "providers": state.stats.snapshot(),
            "counts": state.stats.counts()}


@web.middleware
async def _count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    provider = request.path.split("/", 2)[1]
    if provider not in PROVIDERS:
        return await handler(request)
    stats = request.app[STATE].stats
    if request.path.endswith(COUNT_PATHS):
        stats.counted(provider)
        return await handler(request)
    stats.started(provider)
    try:
        response = await handler(request)
    except asyncio.CancelledError:
        stats.cancelled(provider)
        raise
    except web.HTTPException as exc:
        stats.finished(provider, exc.status)
        raise
    stats.finished(provider, response.status)
    return response


async def _get_stats(request: web.Request) -> web.Response:
    return web.json_response(stats_of(request.app[STATE]))


async def _reset_stats(request: web.Request) -> web.Response:
    request.app[STATE].stats.reset()
    return web.json_response(stats_of(request.app[STATE]))


async def _get_faults(request: web.Request) -> web.Response:
    return web.json_response({"profile": request.app[STATE].faults.profile.text})


async def _set_faults(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        profile = request.app[STATE].faults.set(str(body["profile"]))
    except (ValueError, KeyError, TypeError, FaultProfileError) as exc:
        return web.json_response({"error": f'expected {{"profile": "..."}}: {exc}'}, status=400)
    return web.json_response({"profile": profile.text})
