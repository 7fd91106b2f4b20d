"""Access tokens from an external identity provider (Supabase Auth, Auth0, Keycloak, ...).

Configured by ``idp_issuer`` and ``idp_audience`` plus exactly one key source:

* ``idp_hs256_secret``: a shared HS256 secret (Supabase's legacy JWT secret); only HS256 accepted.
* ``idp_jwks_url``: a JWKS document (RFC 7517) fetched over HTTP(S) by PyJWT's ``PyJWKClient``;
  only ``idp_algorithm`` (RS256 or ES256, RFC 7518 §3.3/§3.4) is accepted, and the key is chosen
  by the token's ``kid``. An unknown ``kid`` refetches the set at most once per
  ``JWKS_REFETCH_S`` (a key rotation is picked up; random kids cannot make us hammer the IdP).

Each mode pins its algorithm list, so ``alg: none`` and HS/RS confusion (an RSA public key used as
an HMAC secret) cannot verify. ``iss``, ``aud``, ``exp``, ``nbf`` (when present) and ``iat`` are
checked against the injected clock, with ``idp_clock_skew_s`` of leeway (default 60 s) for the
IdP's own clock. The principal is ``sub`` with the role from
``idp_role_claim`` when configured (a value outside user/operator/admin is refused), else ``user``.
"""

from __future__ import annotations

from typing import Any

import jwt
from jwt import PyJWKClient, PyJWKClientError

from opsgate.clock import Clock
from opsgate.config import Settings
from opsgate.security.claims import check_times
from opsgate.security.errors import AuthFailure, Unauthorized, jwt_failure

JWKS_ALGORITHMS = ("RS256", "ES256")
JWKS_REFETCH_S = 60.0
JWKS_TIMEOUT_S = 5
_ROLES = ("user", "operator", "admin")


class IdpVerifier:
    """Verifies one identity provider's tokens; build it with :func:`idp_verifier`."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        problems = idp_problems(settings) if settings.idp_issuer else [_NEEDS_BOTH]
        if problems:
            raise ValueError(problems[0])
        self.issuer = settings.idp_issuer
        self._audience = settings.idp_audience
        self._role_claim = settings.idp_role_claim
        self._skew_s = settings.idp_clock_skew_s
        self._clock = clock
        secret = settings.secret("idp_hs256_secret")
        self._secret = secret.encode() if secret is not None else None
        if self._secret is not None and len(self._secret) < 32:
            raise ValueError("OPSGATE_IDP_HS256_SECRET must be at least 32 bytes long")
        self._algorithm = "HS256" if self._secret is not None else settings.idp_algorithm
        self._jwks = (
            PyJWKClient(settings.idp_jwks_url, cache_keys=False, lifespan=300, timeout=JWKS_TIMEOUT_S)
            if settings.idp_jwks_url
            else None
        )
        self._last_fetch = float("-inf")

    def verify(self, token: str) -> tuple[str, str]:
        """``(user_id, role)`` from a valid IdP token. Raises :class:`Unauthorized` naming the
        failed check (never the token)."""
        key = self._secret if self._secret is not None else self._jwk(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self.issuer,
                options={"require": ["sub", "iss", "aud", "exp", "iat"], "verify_exp": False,
                         "verify_nbf": False, "verify_iat": False},
            )
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            raise Unauthorized(AuthFailure.WRONG_AUDIENCE) from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(jwt_failure(exc)) from None
        if not isinstance(claims["sub"], str):
            raise Unauthorized(AuthFailure.MALFORMED)
        check_times(claims, self._clock.now().timestamp(), leeway_s=self._skew_s)
        return claims["sub"], self._role(claims)

    def _jwk(self, token: str) -> Any:
        assert self._jwks is not None
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError:
            raise Unauthorized(AuthFailure.MALFORMED) from None
        if not isinstance(kid, str):
            raise Unauthorized(AuthFailure.MALFORMED, "The access token names no signing key (kid)")
        key = self._find(kid, refresh=False)
        if key is None and self._clock.monotonic() - self._last_fetch >= JWKS_REFETCH_S:
            key = self._find(kid, refresh=True)
        if key is None:
            raise Unauthorized(AuthFailure.UNKNOWN_KEY)
        if key.algorithm_name != self._algorithm:
            raise Unauthorized(AuthFailure.BAD_ALGORITHM,
                               "The identity provider's key does not match the pinned algorithm")
        return key.key

    def _find(self, kid: str, *, refresh: bool) -> Any:
        assert self._jwks is not None
        try:
            if refresh or self._last_fetch == float("-inf"):
                self._last_fetch = self._clock.monotonic()
                keys = self._jwks.get_jwk_set(refresh=True).keys
            else:
                keys = self._jwks.get_jwk_set().keys
        except PyJWKClientError:
            raise Unauthorized(AuthFailure.IDP_UNAVAILABLE) from None
        return next((k for k in keys if k.key_id == kid), None)

    def _role(self, claims: dict[str, Any]) -> str:
        if self._role_claim is None:
            return "user"
        role = claims.get(self._role_claim, "user")
        if role not in _ROLES:
            raise Unauthorized(AuthFailure.UNKNOWN_ROLE)
        return role


_NEEDS_BOTH = "an identity provider needs OPSGATE_IDP_ISSUER and OPSGATE_IDP_AUDIENCE"


def idp_problems(settings: Settings) -> list[str]:
    """What makes the identity provider's settings unusable, one line each, naming the variables
    (never a value); empty when they are usable or the IdP is off (``idp_issuer`` unset). Checked
    before start-up (``opsgate serve``, ``run``) and by :class:`IdpVerifier`; the HS256 secret's
    length is checked when it is read (an ``op://`` reference is resolved first)."""
    if not settings.idp_issuer:
        return []
    problems = [] if settings.idp_audience else [_NEEDS_BOTH]
    if (settings.idp_hs256_secret is None) == (settings.idp_jwks_url is None):
        problems.append("set exactly one of OPSGATE_IDP_HS256_SECRET and OPSGATE_IDP_JWKS_URL")
    elif settings.idp_hs256_secret is None and settings.idp_algorithm not in JWKS_ALGORITHMS:
        problems.append(f"OPSGATE_IDP_ALGORITHM must be one of {', '.join(JWKS_ALGORITHMS)}")
    return problems


def idp_verifier(settings: Settings, clock: Clock) -> IdpVerifier | None:
    """The configured identity provider's verifier, or None when ``idp_issuer`` is unset."""
    return IdpVerifier(settings, clock) if settings.idp_issuer else None
