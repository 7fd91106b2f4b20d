"""Access tokens: issued for 1 hour, HS256 pinned; every malformed or forged token is refused."""

import base64
import json
import secrets

import jwt
import pytest

from opsgate.clock import ManualClock
from opsgate.config import Settings
from opsgate.security.auth import TokenService, bearer_token
from opsgate.security.errors import Unauthorized


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def settings() -> Settings:
    return Settings(jwt_secret=secrets.token_urlsafe(48))


@pytest.fixture
def tokens(settings: Settings, clock: ManualClock) -> TokenService:
    return TokenService(settings, clock)


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_issued_token_carries_user_role_and_one_hour_expiry(tokens, settings, clock):
    token = tokens.issue("alice", "operator")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["role"] == "operator"
    assert claims["exp"] - claims["iat"] == 3600
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    principal = tokens.verify(token)
    assert principal.user_id == "alice" and principal.roles == ("operator",)


def test_token_expires_one_hour_and_the_clock_leeway_after_issue(tokens, clock, settings):
    """``exp`` is one hour after issue; it is checked with ``token_clock_leeway_s`` (30 s) of
    leeway, like ``nbf`` and ``iat`` (RFC 7519 §4.1.4), so the token dies 3,630 s after issue."""
    assert settings.token_clock_leeway_s == 30
    token = tokens.issue("alice", "user")
    clock.advance(3629)
    assert tokens.verify(token).user_id == "alice"
    clock.advance(1)
    with pytest.raises(Unauthorized, match="expired"):
        tokens.verify(token)


def test_a_token_from_a_replica_whose_clock_runs_ahead_is_valid_at_once(settings, clock, tokens):
    """tester-wire F7: a token issued by another replica whose clock runs 1 s ahead was refused
    ``not valid yet`` (no leeway); within ``token_clock_leeway_s`` it is accepted, beyond it
    refused, and a leeway of 0 refuses even the 1 s."""
    ahead = ManualClock(clock.now())
    ahead.advance(1)
    token = TokenService(settings, ahead).issue("alice", "user")
    assert tokens.verify(token).user_id == "alice"
    ahead.advance(30)  # 31 s ahead: past the 30 s leeway
    with pytest.raises(Unauthorized, match="not valid yet"):
        tokens.verify(TokenService(settings, ahead).issue("alice", "user"))
    strict = TokenService(settings.model_copy(update={"token_clock_leeway_s": 0}), clock)
    with pytest.raises(Unauthorized, match="not valid yet"):
        strict.verify(token)


def test_the_token_clock_leeway_is_bounded():
    """``OPSGATE_TOKEN_CLOCK_LEEWAY_S`` is "small" (RFC 7519 §4.1.4): 0 to 300 s."""
    for bad in (-1, 301):
        with pytest.raises(ValueError, match="token_clock_leeway_s"):
            Settings(jwt_secret=secrets.token_urlsafe(48), token_clock_leeway_s=bad)


def test_alg_none_is_rejected(tokens):
    good = jwt.decode(tokens.issue("alice", "admin"), options={"verify_signature": False})
    forged = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(good)}."
    with pytest.raises(Unauthorized):
        tokens.verify(forged)


def test_tampered_payload_is_rejected(tokens):
    header, payload, sig = tokens.issue("alice", "user").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["role"] = "admin"
    with pytest.raises(Unauthorized, match="signature"):
        tokens.verify(f"{header}.{_b64(claims)}.{sig}")


def test_token_signed_with_another_key_is_rejected(tokens, clock):
    other = TokenService(Settings(jwt_secret=secrets.token_urlsafe(48)), clock)
    with pytest.raises(Unauthorized):
        tokens.verify(other.issue("alice", "user"))


def test_wrong_audience_and_issuer_are_rejected(settings, clock, tokens):
    for change in ({"jwt_audience": "elsewhere"}, {"jwt_issuer": "someone-else"}):
        foreign = TokenService(settings.model_copy(update=change), clock)
        with pytest.raises(Unauthorized, match="another service"):
            tokens.verify(foreign.issue("alice", "user"))


def test_not_yet_valid_token_is_rejected(settings, clock, tokens):
    future = ManualClock(clock.now())
    future.advance(120)
    with pytest.raises(Unauthorized, match="not valid yet"):
        tokens.verify(TokenService(settings, future).issue("alice", "user"))


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 500])
def test_malformed_tokens_are_rejected(tokens, token):
    with pytest.raises(Unauthorized):
        tokens.verify(token)


@pytest.mark.parametrize("header", [None, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer   "])
def test_authorization_header_must_be_bearer(header):
    with pytest.raises(Unauthorized):
        bearer_token(header)


def test_short_secret_is_refused(clock):
    with pytest.raises(ValueError, match="32 bytes"):
        TokenService(Settings(jwt_secret="too-short"), clock)


def test_generated_key_file_is_private_and_stable(tmp_path, clock):
    settings = Settings(jwt_secret_file=tmp_path / "k" / "jwt-secret")
    first = TokenService(settings, clock).issue("alice", "user")
    assert (tmp_path / "k" / "jwt-secret").stat().st_mode & 0o777 == 0o600
    assert TokenService(settings, clock).verify(first).user_id == "alice"


def _signed(settings, clock, **over):
    """A local token signed with the real key, its claims changed by ``over``."""
    now = int(clock.now().timestamp())
    claims = {"sub": "alice", "role": "user", "iss": settings.jwt_issuer, "aud": settings.jwt_audience,
              "iat": now, "nbf": now, "exp": now + 3600, "jti": "j1"} | over
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")


@pytest.mark.parametrize("over,reason", [
    ({"iat": "x"}, "malformed or its signature"),                   # tester A F5: was accepted
    ({"iat": None}, "malformed or its signature"),
    ({"iat": True}, "malformed or its signature"),                  # a boolean is not a NumericDate
    ({"exp": True}, "malformed or its signature"),
    ({"iat": "__future__"}, "not valid yet"),                       # tester A F5: 10^6 s ahead was accepted
])
def test_iat_is_a_number_not_in_the_future_like_exp_and_nbf(settings, clock, tokens, over, reason):
    """RFC 7519 §4.1.6 and docs/security.md: ``iat`` is required, a NumericDate, and checked against
    the injected clock, a future one beyond the leeway refused (PyJWT's verify_iat refuses a future
    iat the same way)."""
    if over.get("iat") == "__future__":
        over = {"iat": int(clock.now().timestamp()) + 1_000_000}
    with pytest.raises(Unauthorized, match=reason):
        tokens.verify(_signed(settings, clock, **over))
    assert tokens.verify(_signed(settings, clock, iat=int(clock.now().timestamp()) - 5)).user_id == "alice"
