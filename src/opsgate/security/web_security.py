"""Browser-facing hardening: a strict CORS allowlist and security headers on every response.

CORS (Fetch standard, CORS protocol) through Starlette's ``CORSMiddleware`` with an explicit list
of exact origins from ``cors_origins``: ``*``, wildcards, paths and the ``null`` origin are refused
at start-up, so a credentialed response never says ``*`` and never reflects an unlisted Origin.
Only the methods and headers the API uses are allowed.

Headers (OWASP Secure Headers Project) on every response, including errors:
``Content-Security-Policy`` (``default-src 'self'; frame-ancestors 'none'; ...``; the interactive
API docs under ``/docs`` also allow the Swagger UI assets from cdn.jsdelivr.net),
``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer``,
``Cross-Origin-Opener-Policy: same-origin`` and ``Permissions-Policy`` turning off powerful
features. ``Strict-Transport-Security`` is added when session cookies are ``Secure`` (HTTPS).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/redoc")
BASE_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
)
HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")
CORS_METHODS = ["GET", "POST", "PUT", "DELETE"]
CORS_HEADERS = ["Authorization", "Content-Type", "X-CSRF-Token"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def checked_origins(origins: list[str]) -> list[str]:
    """``origins`` when each is an exact ``scheme://host[:port]`` (http or https, no path, query,
    credentials or wildcard); raises ``ValueError`` naming the first bad entry."""
    for origin in origins:
        parts = urlsplit(origin)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or "*" in origin
            or parts.path
            or parts.query
            or parts.fragment
            or parts.username is not None
            or origin != f"{parts.scheme}://{parts.netloc}"
        ):
            raise ValueError(f"OPSGATE_CORS_ORIGINS: {origin!r} is not an exact scheme://host[:port] origin")
    return list(origins)


def add_web_security(app: FastAPI, origins: list[str], *, hsts: bool) -> None:
    """Install the CORS allowlist (only when ``origins`` is non-empty) and the header middleware."""
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=checked_origins(origins),
            allow_credentials=True,
            allow_methods=CORS_METHODS,
            allow_headers=CORS_HEADERS,
            expose_headers=["X-Request-ID", "Retry-After", "RateLimit", "RateLimit-Policy"],
            max_age=600,
        )
    app.add_middleware(SecurityHeadersMiddleware, hsts=hsts)


class SecurityHeadersMiddleware:
    """ASGI middleware adding the headers above to every HTTP response (a header the app already
    set is kept)."""

    def __init__(self, app: ASGIApp, *, hsts: bool = False) -> None:
        self.app = app
        extra = BASE_HEADERS + ((HSTS,) if hsts else ())
        self._added = {csp: ((b"content-security-policy", csp.encode()), *extra) for csp in (CSP, DOCS_CSP)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        added = self._added[DOCS_CSP if scope["path"].startswith(DOCS_PATHS) else CSP]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [header for header in added if header[0] not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
