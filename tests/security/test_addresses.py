"""The one email address recogniser (opsgate.security.addresses) that the log sanitizer and the
prompt's pseudonymiser share: the forms tester F2 found passing, near misses, the key two
spellings of one address share, and linear work on 1 MB adversarial strings (the bound is
structural -- possessive repetitions, one start per run -- so these assert the values found;
how long it takes is bench/ work)."""

from __future__ import annotations

import re

import pytest

from opsgate.security.addresses import EMAIL, address_key
from opsgate.security.pseudonyms import Pseudonymiser
from opsgate.security.sanitizer import Sanitizer

FIND = re.compile(EMAIL)

FOUND = [
    ("From: Jörg Müller <jörg@müller.example>", ["jörg@müller.example"]),
    ('To: "john doe"@corp.example, 用户@例子.广告', ['"john doe"@corp.example', "用户@例子.广告"]),
    ("Cc: admin@[192.168.1.1], x@localhost", ["admin@[192.168.1.1]"]),
    ("ipv6 user@[IPv6:2001:db8::1].", ["user@[IPv6:2001:db8::1]"]),
    ("https://corp.example/invite?email=anna.berg%40corp.example&x=1", ["anna.berg%40corp.example"]),
    ("mailto:j%C3%B6rg%40m%C3%BCller.example", ["j%C3%B6rg%40m%C3%BCller.example"]),
    ("“jörg@müller.example”, «zoë@société.example»", ["jörg@müller.example", "zoë@société.example"]),
    ("用户@例子.广告，谢谢。", ["用户@例子.广告"]),
    ("o'brien@corp.example and 'anna@corp.example'", ["o'brien@corp.example", "anna@corp.example"]),
    ("to=anna@corp.example&cc=bob@corp.example", ["anna@corp.example", "bob@corp.example"]),
    ("punycode x@xn--mller-kva.example and y@例子.xn--fiqs8s", ["x@xn--mller-kva.example", "y@例子.xn--fiqs8s"]),
    ('"a@b"@corp.example', ['"a@b"@corp.example']),
]


@pytest.mark.parametrize(("text", "addresses"), FOUND, ids=[t for t, _ in FOUND])
def test_each_form_is_found_whole(text: str, addresses: list[str]) -> None:
    assert FIND.findall(text) == addresses


NOT_ADDRESSES = ["root@localhost", "@mention", "a@b.c", "100%40 of them", "see a@b.example-1",
                 "decorator @property", "x@[", "x@[a b]", "a@.example"]


@pytest.mark.parametrize("text", NOT_ADDRESSES)
def test_near_misses_are_not_addresses(text: str) -> None:
    assert FIND.findall(text) == []


def test_every_spelling_of_one_address_has_one_key() -> None:
    spellings = ["jörg@müller.example", "J%C3%B6rg%40M%C3%BCller.example", "JÖRG@xn--mller-kva.example",
                 "jo\u0308rg@mu\u0308ller.example"]  # the last in NFD: o + combining diaeresis
    assert {address_key(s) for s in spellings} == {"jörg@müller.example"}
    assert address_key("X@xn--abc-.example") == "x@xn--abc-.example"  # decodes to ASCII: no A-label
    assert address_key("x@xn--99999999.example") == "x@xn--99999999.example"  # does not decode


def test_the_sanitizer_and_the_pseudonymiser_see_one_person_in_every_spelling() -> None:
    text = "jörg@müller.example / mailto:j%C3%B6rg%40m%C3%BCller.example / JÖRG@xn--mller-kva.example"
    tokens = re.findall(r"\[REDACTED:email:[0-9a-f]{6}\]", Sanitizer(b"k" * 32).sanitize(text))
    assert len(tokens) == 3 and len(set(tokens)) == 1
    people = Pseudonymiser()
    assert people.pseudonymise(text) == (
        "<person1@example.invalid> / mailto:<person1@example.invalid> / <person1@example.invalid>")


def test_an_address_only_percent_encoded_is_pseudonymised() -> None:
    """The pseudonymiser skips texts without an address; ``%40`` is one (no ``@`` in the text)."""
    people = Pseudonymiser()
    sent = people.pseudonymise("join via https://corp.example/invite?email=anna.berg%40corp.example")
    assert sent == "join via https://corp.example/invite?email=<person1@example.invalid>"
    assert people.restore("<person1@example.invalid>") == "anna.berg%40corp.example"


ADVERSARIAL = {
    "a@ repeated": ("a@" * 500_000, 0),
    "one long domain without a top-level domain": ("x@" + "a." * 500_000 + "1", 0),
    "a long local part and nothing after the @": ("a" * 1_000_000 + "@", 0),
    "quotes only": ('"' * 1_000_000, 0),
    "open quoted strings": (('"' + "a" * 61) * 16_000, 0),
    "%40 repeated": ("%40" * 333_333, 0),
    "apostrophes inside words": ("a'" * 500_000, 0),
    "dotted runs between @s": (("a." * 100 + "@") * 5_000, 0),
    "non-ASCII local parts and domains, each an address": (("ü" * 50 + "@" + "ü." * 50 + "de ") * 4_000, 4_000),
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_megabytes_are_read_in_one_pass_and_give_the_right_answer(name: str) -> None:
    text, count = ADVERSARIAL[name]
    assert len(text) >= 600_000
    assert len(FIND.findall(text)) == count
    tail = text + " anna@corp.example"  # an address after the adversarial part is still found
    assert FIND.findall(tail)[-1] == "anna@corp.example"
