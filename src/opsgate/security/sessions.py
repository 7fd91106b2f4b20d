"""Browser sessions for the dashboard: signed cookies and signed double-submit CSRF tokens.

Session cookie (``__Host-opsgate_session``; ``opsgate_session`` when ``session_cookie_secure`` is
off for plain-HTTP development): ``HttpOnly; Secure; SameSite=Strict`` (or ``Lax``), ``Path=/``,
value signed with itsdangerous (HMAC-SHA1 over a key derived from the master key, timestamped,
refused after ``session_ttl_s``). It holds ``{"sid", "sub", "role", "fam"}``: ``fam`` is a refresh
token family started at login, so logout, a role change or reuse detection revokes the session
on the server too (checked on every request).

CSRF (OWASP Cross-Site Request Forgery Prevention Cheat Sheet, "Signed Double-Submit Cookie"):
``token = hex(HMAC-SHA256(csrf_key, len(sid)!sid!len(r)!r)) + "." + r`` for a random ``r``; it is
sent in the ``opsgate_csrf`` cookie (readable by the page, ``SameSite`` and ``Secure`` like the
session) and must come back in the ``X-CSRF-Token`` header or the ``csrf_token`` form field of
every state-changing request (POST, PUT, PATCH, DELETE) that carries a live session cookie (an
expired or revoked one authenticates nothing, so it does not block a fresh login).
:class:`CSRFMiddleware` enforces it; failures are 403 ``csrf_failed``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from opsgate.clock import Clock
from opsgate.config import Settings
from opsgate.security.auth import Principal
from opsgate.security.errors import CSRFFailed
from opsgate.security.keyring import derived_key
from opsgate.security.refresh import RefreshTokens

CSRF_COOKIE = "opsgate_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_FORM_BYTES = 1 << 20

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class SessionManager:
    """Creates, reads and ends dashboard sessions; issues and checks CSRF tokens."""

    def __init__(self, settings: Settings, clock: Clock, refresh: RefreshTokens) -> None:
        self.secure = settings.session_cookie_secure
        self.cookie = "__Host-opsgate_session" if self.secure else "opsgate_session"
        self._samesite = settings.session_samesite
        self._ttl = settings.session_ttl_s
        self._refresh = refresh
        self._csrf_key = derived_key(settings, "csrf-tokens")
        self._serializer = URLSafeTimedSerializer(
            derived_key(settings, "session-cookies"),
            salt="opsgate.session",
            signer=_ClockSigner,
            signer_kwargs={"clock": clock},
        )

    def login(self, response: Response, user_id: str, role: str) -> str:
        """Start a session for ``user_id``: a new login family, the session and CSRF cookies on
        ``response``; returns the CSRF token for the page to embed."""
        family = self._refresh.issue(user_id).family_id
        sid = secrets.token_urlsafe(24)
        value = self._serializer.dumps({"sid": sid, "sub": user_id, "role": role, "fam": family})
        token = csrf_token(self._csrf_key, sid)
        self._set(response, self.cookie, value, http_only=True)
        self._set(response, CSRF_COOKIE, token, http_only=False)
        return token

    def logout(self, request: Request, response: Response) -> None:
        """End the request's session: revoke it on the server and delete both cookies."""
        session = self.read(request)
        if session is not None:
            self._refresh.revoke_family(session["fam"])
        for name in (self.cookie, CSRF_COOKIE):
            response.delete_cookie(name, path="/", secure=self.secure, httponly=name == self.cookie,
                                   samesite=self._samesite)

    def read(self, request: Request) -> dict[str, str] | None:
        """The verified session of ``request`` (``sid``, ``sub``, ``role``, ``fam``), or None when
        there is no cookie, a bad signature, an expired one, or a revoked login."""
        raw = request.cookies.get(self.cookie)
        if not raw:
            return None
        try:
            session = self._serializer.loads(raw, max_age=self._ttl)
        except (BadSignature, SignatureExpired):
            return None
        if not isinstance(session, dict) or not self._refresh.family_active(session.get("fam", "")):
            return None
        return session

    def principal(self, request: Request) -> Principal | None:
        """The :class:`Principal` of the request's session, or None."""
        session = self.read(request)
        return None if session is None else Principal(session["sub"], (session["role"],))

    def check_csrf(self, request: Request, submitted: str | None) -> None:
        """Raise :class:`CSRFFailed` unless ``submitted`` equals the CSRF cookie and is signed for
        the request's session."""
        session = self.read(request)
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if session is None or not submitted or not hmac.compare_digest(submitted, cookie):
            raise CSRFFailed("A valid CSRF token is required for this change")
        if not valid_csrf_token(self._csrf_key, session["sid"], submitted):
            raise CSRFFailed("A valid CSRF token is required for this change")

    def _set(self, response: Response, name: str, value: str, *, http_only: bool) -> None:
        response.set_cookie(name, value, max_age=self._ttl, path="/", secure=self.secure,
                            httponly=http_only, samesite=self._samesite)


def csrf_token(key: bytes, sid: str) -> str:
    """A signed double-submit token bound to session id ``sid`` (format in the module doc)."""
    nonce = secrets.token_urlsafe(24)
    return _mac(key, sid, nonce) + "." + nonce


def valid_csrf_token(key: bytes, sid: str, token: str) -> bool:
    """True when ``token`` was made by :func:`csrf_token` with ``key`` for ``sid``."""
    mac, _, nonce = token.partition(".")
    return bool(nonce) and hmac.compare_digest(mac, _mac(key, sid, nonce))


def _mac(key: bytes, sid: str, nonce: str) -> str:
    message = f"{len(sid)}!{sid}!{len(nonce)}!{nonce}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class _ClockSigner(TimestampSigner):
    """itsdangerous' timestamp signer on the injected clock (so tests can expire sessions)."""

    def __init__(self, *args: Any, clock: Clock, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock.now().timestamp())


class CSRFMiddleware:
    """ASGI middleware: every unsafe request carrying a live session cookie needs a valid CSRF token
    in ``X-CSRF-Token`` or, for form posts, the ``csrf_token`` field (the body, at most 1 MiB, is
    buffered and replayed to the app). ``sessions`` is resolved per request (it lives in the
    runtime, created in the lifespan). ``problem`` renders a refusal and its request id as the
    API's RFC 9457 response (:func:`opsgate.problems.problem_response`, passed in by the app so
    security needs nothing above it)."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        sessions: Callable[[Scope], SessionManager],
        problem: Callable[[Exception, str], Response],
    ) -> None:
        self.app = app
        self._sessions = sessions
        self._problem = problem

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in UNSAFE_METHODS or not _has_cookies(scope):
            await self.app(scope, receive, send)
            return
        manager = self._sessions(scope)
        request = Request(scope, receive)
        if manager.cookie not in request.cookies or await asyncio.to_thread(manager.read, request) is None:
            await self.app(scope, receive, send)  # no live session: the cookie authenticates nothing
            return
        try:
            body = await _read_body(receive)
            submitted = request.headers.get(CSRF_HEADER) or await _form_token(scope, body)
            manager.check_csrf(request, submitted)
        except CSRFFailed as exc:
            await self._problem(exc, secrets.token_hex(16))(scope, _replay(b""), send)
            return
        await self.app(scope, _replay(body), send)


def _has_cookies(scope: Scope) -> bool:
    """Whether the request has a ``Cookie`` header (ASGI header names are lower case): without
    one it carries no session cookie, and is passed on without building a ``Request`` and
    resolving the session manager (two per API call, issue 21)."""
    return any(name == b"cookie" for name, _ in scope["headers"])


async def _read_body(receive: Receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise CSRFFailed("The request body is too large for a form")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _form_token(scope: Scope, body: bytes) -> str | None:
    content_type = Request(scope).headers.get("content-type", "")
    if not content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        return None
    try:
        form = await Request(scope, _replay(body)).form()
    except Exception:  # a malformed form body has no token; the check then fails closed
        return None
    value = form.get(CSRF_FIELD)
    return value if isinstance(value, str) else None
