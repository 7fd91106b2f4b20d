"""The time claims of a JWT (RFC 7519 §4.1.4-4.1.6), checked against the injected clock, for local
tokens (:mod:`opsgate.security.auth`, ``token_clock_leeway_s`` of leeway: another replica may have
issued the token) and identity-provider tokens (:mod:`opsgate.security.idp`, ``idp_clock_skew_s``
of leeway: another machine's clock) alike. Every caller names its leeway: none is the default.

A NumericDate (§2) is a JSON number of seconds since the epoch: an int or a float, never a
boolean or a string. ``exp`` and ``iat`` are required, ``nbf`` is checked when present. Refusals
(:class:`Unauthorized`): a time claim that is not a number -> ``malformed``; ``now >= exp`` ->
``expired``; ``now < nbf`` or ``iat`` in the future -> ``not_yet_valid`` (PyJWT's ``verify_iat``
refuses a future ``iat`` the same way: a token cannot have been issued after the moment it is
presented), each beyond the leeway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opsgate.security.errors import AuthFailure, Unauthorized


def check_times(claims: Mapping[str, Any], now: float, *, leeway_s: float) -> None:
    """Check ``exp``, ``iat`` and (when present) ``nbf`` of ``claims`` at ``now`` (seconds since
    the epoch, from the injected clock), allowing ``leeway_s`` seconds of clock skew between the
    issuer and this process (RFC 7519 §4.1.4/§4.1.5: "some small leeway, usually no more than a
    few minutes"; tester-wire F7: with none, a token issued by a replica whose clock runs 1 s ahead
    was refused as not yet valid). Raises
    :class:`Unauthorized` as the module says."""
    times = [claims["exp"], claims["iat"], claims.get("nbf", claims["iat"])]
    if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in times):
        raise Unauthorized(AuthFailure.MALFORMED)
    exp, iat, nbf = times
    if now - leeway_s >= exp:
        raise Unauthorized(AuthFailure.EXPIRED)
    if now + leeway_s < nbf or now + leeway_s < iat:
        raise Unauthorized(AuthFailure.NOT_YET_VALID)
