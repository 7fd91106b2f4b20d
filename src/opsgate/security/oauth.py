"""RFC 6749 §5.2 error responses of the token endpoints (``POST /v1/auth/token``, ``/v1/auth/refresh``).

An OAuth 2.0 client library reads a refused token request as HTTP 400 with the JSON object
``{"error": CODE, "error_description": TEXT}`` and ``Cache-Control: no-store`` — not as an RFC 9457
problem. The codes opsgate answers:

- ``invalid_request``: a required parameter missing or malformed, a parameter repeated (§3.1),
  more than 32 fields, invalid UTF-8, a body that is not ``application/x-www-form-urlencoded`` in
  UTF-8 (another media type or a declared ``charset`` other than UTF-8), or one over the size limit;
- ``invalid_grant``: an unknown user or a wrong password (the same answer for both), a refresh
  token that is unknown, expired, revoked or reused (§5.2: "invalid, expired, revoked");
- ``unsupported_grant_type``: a ``grant_type`` other than ``password`` or ``refresh_token``.

``invalid_client`` (and its 401 with ``WWW-Authenticate``) is never answered: opsgate has no
client authentication (every client is public, §2.1), so ``client_id`` is ignored. Server-side
failures (503 ``audit_unavailable``, ``database_unavailable``) and a throttled sign-in (429
``rate_limited``, RFC 6585 §4, :mod:`opsgate.metering.signins`) stay RFC 9457 problems with
``Retry-After``: §5.2 defines no code that tells a client to wait. ``error_description`` is the problem detail the
other routes would give (it never quotes what the client sent), reduced to the characters §5.2
allows (``%x20-21 / %x23-5B / %x5D-7E``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opsgate.errors import InvalidInput, OpsgateError
from opsgate.security.errors import Unauthorized
from opsgate.security.sanitizer import sanitize_obj

INVALID_REQUEST = "invalid_request"
INVALID_GRANT = "invalid_grant"
UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
"""RFC 6749 §5.1 and §5.2: token responses, errors included, are not cached."""


class OAuthError(Exception):
    """A refused token request (RFC 6749 §5.2): ``error`` is one of the codes above,
    ``description`` the human-readable text. Always HTTP 400."""

    status = 400

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error, self.description = error, description

    def body(self) -> dict[str, Any]:
        """``{"error", "error_description"}``, sanitized, in §5.2's character set."""
        text = "".join(c for c in self.description if c in _DESCRIPTION_CHARS)
        return sanitize_obj({"error": self.error, "error_description": text})


def as_oauth_error(exc: OpsgateError) -> OAuthError | None:
    """The §5.2 error for a refusal raised on a token endpoint: :class:`Unauthorized` (a credential
    refused) is ``invalid_grant``, any other client error (4xx) ``invalid_request`` naming the
    fields at fault; None for a server-side failure (5xx) or a throttled sign-in (429), which stay
    problems."""
    if exc.status >= 500 or exc.status == 429:
        return None
    if isinstance(exc, Unauthorized):
        return OAuthError(INVALID_GRANT, exc.detail)
    fields = exc.errors if isinstance(exc, InvalidInput) else []
    named = "; ".join(f"[{e['loc']}] {e['msg']}" for e in fields)  # not "loc: msg", which reads as a secret
    return OAuthError(INVALID_REQUEST, f"{exc.detail}: {named}" if named else exc.detail)


@contextmanager
def oauth_errors() -> Iterator[None]:
    """Re-raise a client-side :class:`OpsgateError` from the block as its :class:`OAuthError`
    (:func:`as_oauth_error`); server-side ones pass unchanged."""
    try:
        yield
    except OpsgateError as exc:
        refused = as_oauth_error(exc)
        if refused is None:
            raise
        raise refused from None


_DESCRIPTION_CHARS = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}
