"""The security domain's errors: authentication (401 ``unauthorized``), authorisation and CSRF
(403), secrets (``secret_not_found``, ``secret_unavailable``), data at rest (``decryption_failed``,
``key_ring_error``) and backups (``backup_failed``). Messages name settings, references and key
ids, never a value.

Every :class:`Unauthorized` carries an :class:`AuthFailure` ``reason``: the machine-readable cause
that the security event counts (:mod:`opsgate.security.counts`) and tests read. ``detail`` is the
client's sentence and may be reworded freely; nothing matches on it.
"""

from __future__ import annotations

from enum import StrEnum

import jwt

from opsgate.errors import OpsgateError


class AuthFailure(StrEnum):
    """Why a credential was refused (stable codes, the ``reason`` of a ``token_rejection`` or
    ``sign_in_failure`` count)."""

    MISSING = "missing"
    """No ``Authorization: Bearer`` header (RFC 6750 §3.1)."""
    WRONG_SCHEME = "wrong_scheme"
    """An ``Authorization`` header with another scheme or no token."""
    MALFORMED = "malformed"
    """Not a JWT, a required claim missing or of the wrong type, or no ``kid`` for the IdP."""
    BAD_SIGNATURE = "bad_signature"
    """The signature does not verify under the key."""
    BAD_ALGORITHM = "bad_algorithm"
    """An algorithm other than the pinned one (``none`` included; RFC 8725 §3.1)."""
    WRONG_AUDIENCE = "wrong_audience"
    """Issued by or for another service (``iss``/``aud``)."""
    EXPIRED = "expired"
    """``exp`` has passed (RFC 7519 §4.1.4)."""
    NOT_YET_VALID = "not_yet_valid"
    """``nbf`` is in the future (RFC 7519 §4.1.5)."""
    UNKNOWN_ROLE = "unknown_role"
    """A role outside user / operator / admin."""
    UNKNOWN_KEY = "unknown_key"
    """The identity provider has no key with the token's ``kid``."""
    IDP_UNAVAILABLE = "idp_unavailable"
    """The identity provider's JWKS could not be fetched."""
    REFRESH_INVALID = "refresh_invalid"
    """A refresh token that is unknown, expired or revoked."""
    REFRESH_REUSED = "refresh_reused"
    """A rotated refresh token presented again after the grace window (RFC 9700 §4.14.2)."""
    BAD_CREDENTIALS = "bad_credentials"
    """A password sign-in with an unknown user or a wrong password."""
    NO_SESSION = "no_session"
    """A dashboard page without a valid session cookie."""
    REVOKED = "revoked"
    """An access token whose login (``sid``) was revoked: logout, refresh-token reuse, a role or
    password change (:mod:`opsgate.security.revocations`)."""


_INVALID = "The access token is malformed or its signature is invalid"
_DETAILS = {
    AuthFailure.MISSING: "Missing Authorization header with a Bearer token",
    AuthFailure.WRONG_SCHEME: "The Authorization header must use the Bearer scheme",
    AuthFailure.MALFORMED: _INVALID,
    AuthFailure.BAD_SIGNATURE: _INVALID,
    AuthFailure.BAD_ALGORITHM: _INVALID,
    AuthFailure.WRONG_AUDIENCE: "The access token was issued for another service",
    AuthFailure.EXPIRED: "The access token has expired",
    AuthFailure.NOT_YET_VALID: "The access token is not valid yet",
    AuthFailure.UNKNOWN_ROLE: "The access token carries an unknown role",
    AuthFailure.UNKNOWN_KEY: "The access token names an unknown signing key",
    AuthFailure.IDP_UNAVAILABLE: "The identity provider's keys are unavailable",
    AuthFailure.REFRESH_INVALID: "The refresh token is not valid",
    AuthFailure.REFRESH_REUSED: "The refresh token was already used; every session of this login is revoked",
    AuthFailure.BAD_CREDENTIALS: "Unknown user or wrong password",
    AuthFailure.NO_SESSION: "Sign in to the dashboard first",
    AuthFailure.REVOKED: "The access token's login was revoked; sign in again",
}
"""The client's sentence per reason (one sentence for the three ways a signature check fails, so
a caller learns no more than "invalid")."""


class Unauthorized(OpsgateError):
    """No valid credentials (401); ``reason`` says which check failed, ``detail`` (default: the
    reason's sentence) is what the client reads."""

    code = "unauthorized"
    status = 401
    title = "Authentication required"

    def __init__(self, reason: AuthFailure, detail: str | None = None) -> None:
        super().__init__(detail or _DETAILS[reason])
        self.reason = reason


def jwt_failure(exc: jwt.InvalidTokenError) -> AuthFailure:
    """The reason of a PyJWT refusal: a bad signature, a disallowed algorithm, or malformed."""
    if isinstance(exc, jwt.InvalidSignatureError):
        return AuthFailure.BAD_SIGNATURE
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return AuthFailure.BAD_ALGORITHM
    return AuthFailure.MALFORMED


class Forbidden(OpsgateError):
    """Valid credentials without the right to do this (403)."""

    code = "forbidden"
    status = 403
    title = "Forbidden"


class CSRFFailed(Forbidden):
    """A state-changing browser request without a valid CSRF token (403)."""

    code = "csrf_failed"
    title = "CSRF check failed"


class SecretNotFound(OpsgateError):
    """The named environment variable is unset, or the 1Password reference resolves to nothing."""

    code = "secret_not_found"
    status = 500
    title = "Secret not configured"


class SecretUnavailable(OpsgateError):
    """The secret store (1Password Connect) could not be reached or refused the request."""

    code = "secret_unavailable"
    status = 503
    title = "Secret store unavailable"


class DecryptionFailed(OpsgateError):
    """A stored ciphertext does not decrypt: wrong context, tampered, or an unknown format (500)."""

    code = "decryption_failed"
    status = 500
    title = "Stored data could not be decrypted"


class KeyRingError(OpsgateError):
    """The key ring cannot serve a request: unknown key id, a master key that is missing, not 32
    base64 bytes or does not unwrap the ring, retiring the current key. A server-side fault the
    client cannot fix (503 with ``Retry-After``, like every server failure of the token endpoint;
    ``/readyz`` reports it as not ready). Messages name the setting or the key id, never key
    material."""

    code = "key_ring_error"
    status = 503
    title = "The key ring cannot serve this request"
    retry_after = 60.0


class BackupError(OpsgateError):
    """A backup cannot be made, read or restored: another master key, a tampered or foreign file,
    a failing ``pg_dump``/``pg_restore`` (500)."""

    code = "backup_failed"
    status = 500
    title = "The backup could not be made, read or restored"
