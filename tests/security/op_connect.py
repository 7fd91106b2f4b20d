"""A loopback 1Password Connect stand-in (the Connect REST shapes): vault "Prod" with item
"Anthropic" whose section "keys" has field "credential" = :data:`VALUE`, readable with the bearer
:data:`TOKEN` (both generated at import, never real secrets). The ``connect`` fixture that serves it
is in ``tests/security/conftest.py``."""

from __future__ import annotations

import secrets

from aiohttp import web

VALUE = "sk-ant-api03-" + secrets.token_urlsafe(40)
TOKEN = secrets.token_urlsafe(24)


def connect_app(seen: list[str]) -> web.Application:
    """Vault "Prod" with item "Anthropic" whose section "keys" has field "credential"."""

    async def vaults(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"status": 401, "message": "Invalid token"}, status=401)
        ok = request.query.get("filter") == 'title eq "Prod"'
        return web.json_response([{"id": "v1", "name": "Prod"}] if ok else [])

    async def items(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        ok = request.query.get("filter") == 'title eq "Anthropic"'
        return web.json_response([{"id": "i1", "title": "Anthropic"}] if ok else [])

    async def item(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        return web.json_response({
            "id": "i1", "title": "Anthropic", "updatedAt": "2025-01-01T00:00:00Z",
            "sections": [{"id": "s1", "label": "keys"}],
            "fields": [{"id": "f1", "label": "credential", "value": VALUE, "section": {"id": "s1"}}],
        })  # fmt: skip

    app = web.Application()
    app.router.add_get("/v1/vaults", vaults)
    app.router.add_get("/v1/vaults/v1/items", items)
    app.router.add_get("/v1/vaults/v1/items/i1", item)
    return app
