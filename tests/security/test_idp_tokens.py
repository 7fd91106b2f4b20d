"""External identity provider tokens (HS256 shared secret or JWKS over HTTP from a loopback server)
and the JWT attack suite: alg=none, HS/RS confusion, expired, not yet valid, wrong issuer or
audience, tampered payload, unknown kid -- every one refused with 401."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from opsgate.clock import ManualClock
from opsgate.config import Settings
from opsgate.security.auth import TokenService
from opsgate.security.errors import Unauthorized

ISSUER = "https://idp.example.test/auth/v1"
AUDIENCE = "authenticated"


class JWKSServer:
    """A loopback HTTP server answering ``GET /jwks.json`` with the current key set; counts hits."""

    def __init__(self) -> None:
        self.keys: list[dict] = []
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.hits += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def publish(self, public_key, kid: str, alg: str) -> None:
        to_jwk = RSAAlgorithm.to_jwk if alg == "RS256" else ECAlgorithm.to_jwk
        self.keys.append({**to_jwk(public_key, as_dict=True), "kid": kid, "alg": alg, "use": "sig"})


@pytest.fixture
def jwks():
    server = JWKSServer()
    yield server
    server.httpd.shutdown()


@pytest.fixture
def clock():
    return ManualClock()


def _claims(clock, **over):
    now = int(clock.now().timestamp())
    base = {"sub": "6f1c-user", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 3600}
    return {**base, **over}


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _service(clock, **idp) -> TokenService:
    settings = Settings(jwt_secret=secrets.token_urlsafe(48), idp_issuer=ISSUER, idp_audience=AUDIENCE, **idp)
    return TokenService(settings, clock)


@pytest.fixture
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def rs256(jwks, rsa_key, clock):
    jwks.publish(rsa_key.public_key(), "k1", "RS256")
    return _service(clock, idp_jwks_url=jwks.url, idp_algorithm="RS256")


def test_rs256_token_from_the_jwks_is_accepted(rs256, rsa_key, clock, jwks):
    token = jwt.encode(_claims(clock), rsa_key, algorithm="RS256", headers={"kid": "k1"})
    principal = rs256.verify(token)
    assert principal.user_id == "6f1c-user" and principal.roles == ("user",)
    rs256.verify(token)
    assert jwks.hits == 1  # the key set is cached


def test_es256_token_is_accepted_when_es256_is_pinned(jwks, clock):
    key = ec.generate_private_key(ec.SECP256R1())
    jwks.publish(key.public_key(), "ec1", "ES256")
    service = _service(clock, idp_jwks_url=jwks.url, idp_algorithm="ES256")
    token = jwt.encode(_claims(clock), key, algorithm="ES256", headers={"kid": "ec1"})
    assert service.verify(token).user_id == "6f1c-user"


def test_hs256_shared_secret_idp_with_role_claim(clock):
    secret = secrets.token_urlsafe(48)
    service = _service(clock, idp_hs256_secret=secret, idp_role_claim="app_role")
    token = jwt.encode(_claims(clock, app_role="operator"), secret, algorithm="HS256")
    assert service.verify(token).roles == ("operator",)
    with pytest.raises(Unauthorized, match="unknown role"):
        service.verify(jwt.encode(_claims(clock, app_role="root"), secret, algorithm="HS256"))


def test_a_rotated_idp_key_is_fetched_once_then_unknown_kids_are_not_refetched(rs256, jwks, clock):
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    first = jwt.encode(_claims(clock), new_key, algorithm="RS256", headers={"kid": "unknown-1"})
    with pytest.raises(Unauthorized, match="unknown signing key"):
        rs256.verify(first)
    assert jwks.hits == 1
    clock.advance(60)
    jwks.publish(new_key.public_key(), "k2", "RS256")
    token = jwt.encode(_claims(clock), new_key, algorithm="RS256", headers={"kid": "k2"})
    assert rs256.verify(token).user_id == "6f1c-user"
    assert jwks.hits == 2
    for i in range(5):
        with pytest.raises(Unauthorized, match="unknown signing key"):
            rs256.verify(jwt.encode(_claims(clock), new_key, algorithm="RS256", headers={"kid": f"r{i}"}))
    assert jwks.hits == 2


# --- the attack suite: each case is refused with 401 by the IdP path and the local path ---------


def _attacks(clock, rsa_key):
    good = _claims(clock)
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signed = jwt.encode(good, rsa_key, algorithm="RS256", headers={"kid": "k1"})
    header, payload, sig = signed.split(".")
    tampered = f"{header}.{_b64({**good, 'sub': 'admin'})}.{sig}"
    hs_confusion = _hmac_with_public_key(good, public_pem)
    return {
        "alg_none": f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': 'k1'})}.{_b64(good)}.",
        "hs_rs_confusion": hs_confusion,
        "expired": jwt.encode({**good, "exp": good["iat"] - 61}, rsa_key, algorithm="RS256", headers={"kid": "k1"}),
        "not_yet_valid": jwt.encode({**good, "nbf": good["iat"] + 61}, rsa_key, algorithm="RS256", headers={"kid": "k1"}),
        "wrong_audience": jwt.encode({**good, "aud": "other"}, rsa_key, algorithm="RS256", headers={"kid": "k1"}),
        "tampered": tampered,
        "unknown_kid": jwt.encode(good, rsa_key, algorithm="RS256", headers={"kid": "nope"}),
        "no_kid": jwt.encode(good, rsa_key, algorithm="RS256"),
        "garbage": "a.b.c",
    }


def _hmac_with_public_key(claims: dict, public_pem: bytes) -> str:
    """A token signed HS256 with the RSA public key as the HMAC secret (PyJWT refuses to make one,
    so it is assembled by hand)."""
    import hashlib
    import hmac

    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': 'k1'})}.{_b64(claims)}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "attack",
    ["alg_none", "hs_rs_confusion", "expired", "not_yet_valid", "wrong_audience", "tampered",
     "unknown_kid", "no_kid", "garbage"],
)
def test_idp_attack_suite(rs256, rsa_key, clock, attack):
    token = _attacks(clock, rsa_key)[attack]
    with pytest.raises(Unauthorized) as caught:
        rs256.verify(token)
    assert caught.value.status == 401


def test_wrong_issuer_goes_to_the_local_verifier_and_fails(rs256, rsa_key, clock):
    token = jwt.encode(_claims(clock, iss="https://evil.example"), rsa_key, algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(Unauthorized):
        rs256.verify(token)


def test_the_idp_issuer_cannot_be_the_local_issuer(clock):
    with pytest.raises(ValueError, match="differ"):
        TokenService(Settings(jwt_secret=secrets.token_urlsafe(48), idp_issuer="opsgate", idp_audience="a",
                              idp_hs256_secret=secrets.token_urlsafe(48)), clock)


def test_hs256_idp_refuses_an_rs256_token_and_alg_none(clock, rsa_key):
    secret = secrets.token_urlsafe(48)
    service = _service(clock, idp_hs256_secret=secret)
    for token in (
        jwt.encode(_claims(clock), rsa_key, algorithm="RS256"),
        f"{_b64({'alg': 'none'})}.{_b64(_claims(clock))}.",
        jwt.encode(_claims(clock, exp=int(clock.now().timestamp()) - 61), secret, algorithm="HS256"),
    ):
        with pytest.raises(Unauthorized):
            service.verify(token)


def test_local_attack_suite_through_http(gateway):
    """The same attacks against the running gateway's own tokens: 401 problem documents."""
    local = TokenService(gateway.settings, ManualClock())
    good = jwt.decode(local.issue("alice", "admin"), options={"verify_signature": False})
    now = int(time.time())
    key = gateway.settings.jwt_secret.get_secret_value()
    rsa_private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fresh = {**good, "iat": now, "nbf": now, "exp": now + 3600}
    cases = {
        "alg_none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(fresh)}.",
        "rs256": jwt.encode(fresh, rsa_private, algorithm="RS256"),
        "expired": jwt.encode({**fresh, "exp": now - 600}, key, algorithm="HS256"),  # past the 30 s leeway
        "not_yet_valid": jwt.encode({**fresh, "nbf": now + 600}, key, algorithm="HS256"),
        "wrong_issuer": jwt.encode({**fresh, "iss": "evil"}, key, algorithm="HS256"),
        "wrong_audience": jwt.encode({**fresh, "aud": "evil"}, key, algorithm="HS256"),
        "tampered": _tamper(jwt.encode(fresh, key, algorithm="HS256")),
        "unknown_kid": jwt.encode(fresh, secrets.token_bytes(32), algorithm="HS256", headers={"kid": "zz"}),
    }
    for name, token in cases.items():
        response = gateway.post("email-classify", {"subject": "x", "body": "y"}, token=token)
        assert response.status_code == 401, name
        assert response.json()["code"] == "unauthorized", name


def _tamper(token: str) -> str:
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    return f"{header}.{_b64({**claims, 'role': 'admin', 'sub': 'mallory'})}.{sig}"


def test_an_idp_token_issued_in_the_future_is_refused_even_with_an_nbf(clock):
    """The IdP verifier only checked ``iat`` when ``nbf`` was absent (as its stand-in); now both
    verifiers share one time check (opsgate.security.claims)."""
    secret = secrets.token_urlsafe(48)
    service = _service(clock, idp_hs256_secret=secret)
    now = int(clock.now().timestamp())
    for over, reason in (({"iat": now + 600}, "not valid yet"), ({"iat": "yesterday"}, "malformed")):
        with pytest.raises(Unauthorized, match=reason):
            service.verify(jwt.encode(_claims(clock, **over), secret, algorithm="HS256"))


def test_an_idp_principal_without_a_users_row_keeps_the_role_the_idp_asserts(clock, tmp_path):
    """IdP users have no row by design: their role comes from OPSGATE_IDP_ROLE_CLAIM, so
    current_principal does not cap them (a local token without a row is capped at user)."""
    from opsgate.security.users import current_principal
    from opsgate.store.db import make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'idp.db'}"
    upgrade(url)
    engine = make_engine(url)
    secret = secrets.token_urlsafe(48)
    service = _service(clock, idp_hs256_secret=secret, idp_role_claim="app_role")
    idp = service.verify(jwt.encode(_claims(clock, app_role="operator"), secret, algorithm="HS256"))
    local = service.verify(service.issue("ghost", "operator"))
    assert current_principal(engine, idp).roles == ("operator",)
    assert current_principal(engine, local).roles == ("user",)
    engine.dispose()


def test_an_idp_token_is_allowed_the_idp_clock_skew_and_no_more(clock):
    """The IdP's clock is another machine's: a token used the moment it was issued by a clock a
    few seconds ahead (or just past its exp by a slower one) passes within OPSGATE_IDP_CLOCK_SKEW_S
    (60 s by default); beyond it, it is refused as before. Local tokens get their own
    OPSGATE_TOKEN_CLOCK_LEEWAY_S (tests/security/test_auth.py)."""
    secret = secrets.token_urlsafe(48)
    now = int(clock.now().timestamp())
    service = _service(clock, idp_hs256_secret=secret)
    for over in ({"iat": now + 5, "nbf": now + 5}, {"exp": now - 5}, {"iat": now + 60, "nbf": now + 60}):
        assert service.verify(jwt.encode(_claims(clock, **over), secret, algorithm="HS256")).user_id == "6f1c-user"
    for over, reason in (({"iat": now + 61, "nbf": now + 61}, "not valid yet"), ({"exp": now - 60}, "expired")):
        with pytest.raises(Unauthorized, match=reason):
            service.verify(jwt.encode(_claims(clock, **over), secret, algorithm="HS256"))
    strict = _service(clock, idp_hs256_secret=secret, idp_clock_skew_s=0)
    with pytest.raises(Unauthorized, match="not valid yet"):
        strict.verify(jwt.encode(_claims(clock, iat=now + 5, nbf=now + 5), secret, algorithm="HS256"))
