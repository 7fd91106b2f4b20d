"""Redaction vectors (tests/vectors/redaction.json): every pattern and its near misses,
idempotence as a property, sanitize_obj, and the correlation hash."""

from __future__ import annotations

import json
import re
import secrets
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsgate.security.sanitizer import Sanitizer, card_valid, iban_valid, is_sensitive_name, sanitize

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "redaction.json").read_text()
)["vectors"]
ALPHABETS = {
    "alnum": string.ascii_letters + string.digits,
    "hex": "0123456789abcdef",
    "urlsafe": string.ascii_letters + string.digits + "-_",
    "upper": string.ascii_uppercase + string.digits,
    "alpha": string.ascii_letters,
    "b64": string.ascii_letters + string.digits + "/+",
    "digit": string.digits,
}
TOKEN = re.compile(r"\[REDACTED:([a-z_]+):[0-9a-f]{6}\]")


def expand(template: str) -> tuple[str, list[str]]:
    """Fill ``{alphabet:N}`` placeholders with random characters; return the text and the fills."""
    fills: list[str] = []

    def fill(m: re.Match[str]) -> str:
        value = "".join(secrets.choice(ALPHABETS[m.group(1)]) for _ in range(int(m.group(2))))
        fills.append(value)
        return value

    return re.sub(r"\{(alnum|hex|urlsafe|upper|alpha|b64|digit):(\d+)\}", fill, template), fills


@pytest.fixture(scope="module")
def sanitizer() -> Sanitizer:
    return Sanitizer(b"k" * 32, phone_regions=("US", "GB"))


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(sanitizer: Sanitizer, vector: dict) -> None:
    if "regions" in vector:
        sanitizer = Sanitizer(b"k" * 32, phone_regions=vector["regions"])
    text, fills = expand(vector["input"])
    out = sanitizer.sanitize(text)
    assert TOKEN.findall(out) == vector["kinds"], out
    for kept in vector.get("kept", []):
        assert kept in out
    if not vector["kinds"]:
        assert out == text
    if vector["kinds"]:  # then every random part lies inside what is redacted
        assert not [value for value in fills if value in out]
    assert sanitizer.sanitize(out) == out


def test_same_value_same_hash_across_lines_and_formats(sanitizer: Sanitizer) -> None:
    a = sanitizer.sanitize("from Bob@Example.com, call +1 415 555 2671")
    b = sanitizer.sanitize("to bob@example.com; call (415) 555-2671")
    assert TOKEN.findall(a) == TOKEN.findall(b) == ["email", "phone"]
    assert re.findall(r"\[REDACTED:[^\]]+\]", a) == re.findall(r"\[REDACTED:[^\]]+\]", b)


def test_hash_depends_on_the_key() -> None:
    text = "ana@example.org"
    assert Sanitizer(b"a" * 32).sanitize(text) != Sanitizer(b"b" * 32).sanitize(text)


def test_sanitize_obj_redacts_under_sensitive_keys(sanitizer: Sanitizer) -> None:
    out = sanitizer.sanitize_obj(
        {
            "headers": {"X-Api-Key": "plain", "Accept": "json"},
            "secrets": {"db": "hunter2", "port": 5432},
            "input_tokens": 12,
            "note": ("mail ana@example.org", None, True),
            "ana@example.org": 1,
        }
    )
    assert TOKEN.fullmatch(out["headers"]["X-Api-Key"])
    assert out["headers"]["Accept"] == "json"
    assert TOKEN.fullmatch(out["secrets"]["db"]) and TOKEN.fullmatch(out["secrets"]["port"])
    assert out["input_tokens"] == 12
    assert out["note"][0].startswith("mail [REDACTED:email:") and out["note"][1:] == (None, True)
    assert list(out)[-1].startswith("[REDACTED:email:")
    assert sanitizer.sanitize_obj(out) == out


def test_sensitive_names() -> None:
    assert all(map(is_sensitive_name, ["Authorization", "db_password", "X-Api-Key", "setCookie"]))
    assert not any(map(is_sensitive_name, ["input_tokens", "max_tokens", "monkey", "user", 3]))


def test_sensitive_names_in_every_case_style() -> None:
    names = ["privateKey", "private_key", "PRIVATE_KEY", "signingKey", "signing-key", "accessKeyId",
             "access_key_id", "auth", "Auth", "pwd", "PWD", "bearer", "BearerToken", "apiKey",
             "x-api-key", "clientSecret", "refresh_token", "sessionToken", "db_pass", "passphrase",
             "AWS_SECRET_ACCESS_KEY", "authToken", "webhookUrl", "otp"]
    assert [n for n in names if not is_sensitive_name(n)] == []
    near = ["author", "authority", "monkey", "keyboard", "tokens", "token_count", "output_tokens",
            "passenger", "signal", "spinner", "id", "key_id_count"]
    assert [n for n in near if is_sensitive_name(n)] == []


def test_sanitize_obj_redacts_camel_case_secret_keys(sanitizer: Sanitizer) -> None:
    out = sanitizer.sanitize_obj({"credentials": {"accessKeyId": "AKIDEXAMPLE", "privateKey": "abc"},
                                  "auth": "letmein", "pwd": 1234, "bearer": "x", "author": "Ada"})
    assert TOKEN.fullmatch(out["credentials"]["accessKeyId"]) and TOKEN.fullmatch(out["credentials"]["privateKey"])
    assert all(TOKEN.fullmatch(out[k]) for k in ("auth", "pwd", "bearer"))
    assert out["author"] == "Ada"


def test_held_secrets_are_redacted_literally_whatever_their_shape() -> None:
    odd = "correct horse " + secrets.token_hex(4) + " battery"  # no known key shape, has spaces
    s = Sanitizer(b"k" * 32)
    assert s.sanitize(f"connecting with {odd}!") == f"connecting with {odd}!"
    s.hold(odd)
    s.hold("short")  # under MIN_HELD_SECRET: not held (it would blank ordinary words)
    out = s.sanitize(f"connecting with {odd}!\nagain: {odd}; short stays")
    assert odd not in out and TOKEN.findall(out) == ["secret", "secret"] and "short stays" in out
    assert s.sanitize(out) == out
    assert odd not in json.dumps(s.sanitize_obj({"note": [f"x{odd}y"]}))


def test_a_held_secret_that_contains_another_is_redacted_whole() -> None:
    inner = secrets.token_hex(6)
    outer = inner + secrets.token_hex(6)
    s = Sanitizer(b"k" * 32)
    s.hold(inner)  # held first: replacing it first would leave the rest of ``outer`` in clear
    s.hold(outer)
    assert s.sanitize(f"a {outer} b {inner} c") == f"a {s.token('secret', outer)} b {s.token('secret', inner)} c"


def test_luhn_and_mod97() -> None:
    assert card_valid("4111111111111111") and not card_valid("4111111111111112")
    assert not card_valid("1714567890123")  # Luhn-valid shape but no card network prefix
    assert iban_valid("GB82WEST12345698765432") and not iban_valid("GB83WEST12345698765432")


def test_unknown_phone_region_refused() -> None:
    with pytest.raises(ValueError, match="UK"):
        Sanitizer(phone_regions=("UK",))


_pieces = st.sampled_from(
    [
        "ana@example.org", "+44 20 7946 0958", "4111 1111 1111 1111", "password=", "token: ",
        "Authorization: Bearer abc123def456", "https://u:p@h.io/", "?key=", "sk-" + "a" * 24,
        "GB82 WEST 1234 5698 7654 32", " ", "\n", "=", ":", "\"", "'", "[", "]", "@", "-", ".",
        "2025-03-14T10:22:33Z", "[REDACTED:email:abcdef]", "415", "555", "2671", "AKIA" + "B" * 16,
    ]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_pieces, st.text(max_size=12)), max_size=12).map("".join))
def test_idempotent(text: str) -> None:
    sanitizer = Sanitizer(b"p" * 32)
    once = sanitizer.sanitize(text)
    assert sanitizer.sanitize(once) == once


def test_redaction_reaches_a_fixed_point_when_one_secret_hides_another() -> None:
    glued = "AKIA" + "A" * 16 + "sk-" + "a" * 24  # found by hypothesis: one pass left the sk- key
    once = sanitize(glued)
    assert "sk-" not in once and sanitize(once) == once


def test_a_value_is_never_cut_inside_a_redaction_token() -> None:
    # found by hypothesis: the bare value of the non-sensitive name ``orgtoken`` stopped before the
    # ``]`` of the token redacted inside it, so every pass wrapped the token in one more ``]``
    sanitizer = Sanitizer(b"p" * 32)
    once = sanitizer.sanitize("orgtoken: password=ana@example.org")
    assert once == "orgtoken: password=" + sanitizer.token("field", "ana@example.org")
    assert sanitizer.sanitize(once) == once


PGP_LABEL = "PGP " + "PRIVATE KEY BLOCK"  # joined at run time: the secret scan knows the label


def _armored(body: str) -> str:
    """An OpenPGP ASCII-armored private key (RFC 4880 §6.2) around ``body``, with armor headers."""
    return (f"-----BEGIN {PGP_LABEL}-----\nVersion: GnuPG v2.0.22 (GNU/Linux)\nComment: key for "
            f"deploy@build.example\n\n{body}\n={secrets.token_hex(2)}\n-----END {PGP_LABEL}-----")


def _base64_lines(n: int) -> str:
    return "\n".join(expand("{b64:64}")[0] for _ in range(n))


def test_an_openpgp_private_key_block_is_redacted_whole(sanitizer: Sanitizer) -> None:
    body = _base64_lines(4)
    out = sanitizer.sanitize(f"deploy key:\n{_armored(body)}\nthanks")
    assert re.fullmatch(r"deploy key:\n\[REDACTED:pem:[0-9a-f]{6}\]\nthanks", out), out
    assert sanitizer.sanitize(out) == out


def test_an_openpgp_private_key_cut_short_is_redacted_with_its_armor_headers(sanitizer: Sanitizer) -> None:
    body = _base64_lines(3)
    cut = _armored(body).split("\n=")[0]  # no checksum, no END line: a message cut short
    out = sanitizer.sanitize(cut)
    assert TOKEN.fullmatch(out) and TOKEN.findall(out) == ["pem"], out
    assert "GnuPG" not in out and not [line for line in body.splitlines() if line in out]


def test_key_blocks_are_read_in_one_pass(sanitizer: Sanitizer) -> None:
    """A megabyte of BEGIN lines that no END follows, each cut short by a ``.``: each attempt
    stops at the next BEGIN (the old lazy ``.*?`` ran every one of them to the end of the text)."""
    text = ("-----BEGIN " + "PRIVATE KEY-----.") * 40_000  # joined: the secret scan knows the line
    assert len(text) > 1_000_000
    out = sanitizer.sanitize(text)
    assert TOKEN.findall(out) == ["pem"] * 40_000 and out.count(".") == 40_000
