"""The security headers of every response, byte for byte (opsgate.security.web_security)."""

from __future__ import annotations

import asyncio

import pytest

from opsgate.security.web_security import SecurityHeadersMiddleware

API_CSP = (b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
           b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
DOCS_CSP = (b"default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            b"style-src 'self' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
            b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
BASE = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
]
HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")


def _headers(path: str, own: list[tuple[bytes, bytes]], *, hsts: bool) -> list[tuple[bytes, bytes]]:
    """The header list of the start message an app sending ``own`` headers at ``path`` gets out."""
    sent: list[dict] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": list(own)})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    for _ in range(2):  # the second request must get the same headers as the first
        sent.clear()
        asyncio.run(SecurityHeadersMiddleware(app, hsts=hsts)({"type": "http", "path": path}, receive, send))
    return sent[0]["headers"]


@pytest.mark.parametrize(("path", "own", "hsts", "expected"), [
    ("/v1/operations/email-compose", [(b"content-type", b"application/json")], False,
     [(b"content-type", b"application/json"), (b"content-security-policy", API_CSP), *BASE]),
    ("/docs/oauth2-redirect", [], True, [(b"content-security-policy", DOCS_CSP), *BASE, HSTS]),
    ("/healthz", [(b"X-Frame-Options", b"SAMEORIGIN"), (b"content-security-policy", b"none")], True,
     [(b"X-Frame-Options", b"SAMEORIGIN"), (b"content-security-policy", b"none"),
      *[h for h in BASE if h[0] != b"x-frame-options"], HSTS]),
])
def test_security_headers_are_added_in_order_and_a_header_the_app_set_is_kept(
    path: str, own: list[tuple[bytes, bytes]], hsts: bool, expected: list[tuple[bytes, bytes]]
) -> None:
    assert _headers(path, own, hsts=hsts) == expected
