"""Email addresses as they are written in text: the one recogniser the log sanitizer
(:mod:`opsgate.security.sanitizer`, kind ``email``) and the prompt's pseudonymiser
(:mod:`opsgate.security.pseudonyms`) share, so what one finds the other finds.

:data:`EMAIL` (a regex source without capturing groups, to embed in larger patterns) finds an
RFC 5322 §3.4.1 ``addr-spec``:

* a local part that is a dot-atom of letters, digits and ``_ + - . %`` (with an apostrophe inside
  it: ``o'brien``) and any UTF-8 non-ASCII character (RFC 6531 §3.3, ``jörg``, ``用户``), or a
  quoted string of at most 64 characters (``"john doe"``, RFC 5321 §4.5.3.1.1);
* ``@``, or its percent-encoding ``%40`` (an address in a URL: ``mailto:anna%40corp.example``,
  ``?email=anna%40corp.example``, RFC 3986 §2.1);
* a domain of two or more labels of letters, digits, ``-``, non-ASCII characters (U-labels,
  RFC 5890) and percent-escapes, whose last label is a top-level domain (two or more letters or
  non-ASCII characters, or an ``xn--`` A-label), or a domain literal (``[192.0.2.1]``,
  ``[IPv6:2001:db8::1]``, RFC 5321 §4.1.3).

The other atext characters of RFC 5322 (``! # $ & * / = ? ^ ` { | } ~``) are left out of the
dot-atom on purpose: they delimit URLs and ``name=value`` pairs, so ``to=anna@corp.example``
must find ``anna@corp.example``, not ``to=anna``. Non-ASCII punctuation (:data:`_NOT_IN_ADDRESS`)
ends an address too, so ``“jörg@müller.example”`` and ``用户@例子.广告，`` find the address
without their quotes and commas. A host without a dot (``root@localhost``) is not an address.
Scripts written without spaces (Chinese, Japanese) have no word boundary a regex can see: the
whole run before ``@`` is taken as the local part, more than the address but never less.

Linear time: every repetition is possessive (``++``, ``{m,n}+``: it never gives back what it
took) over a character set that cannot match the character that ends it, a quoted local part is
at most 64 characters, and a local part starts only where no local-part character stands
before it, so each character of a text is read by at most a fixed number of attempts (as part
of one local part and one domain). The one group that gives back, the domain's labels, gives
back whole labels, each of which is then read once more as the top-level domain.
``tests/security/test_addresses.py`` runs 1 MB adversarial strings through it.

:func:`address_key` is the form two spellings of one address share: percent-decoded, A-labels
decoded to Unicode, NFC, lower case.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import unquote

_NOT_IN_ADDRESS = (
    r"\x80-\xbf\u1680\u2000-\u206f\u3000-\u303f\ufe30-\ufe4f\ufeff\uff00-\uff0f\uff1a-\uff20"
    r"\uff3b-\uff40\uff5b-\uff65"
)
"""Non-ASCII characters that end an address: whitespace, C1 controls and Latin-1 punctuation
(``« » ¡ ¿ § ·``), General Punctuation (``‘ ’ “ ” – — …``, zero-width characters), CJK
punctuation (``、 。 「 」``), CJK compatibility forms, the BOM and fullwidth punctuation (``，
： ； （ ） ＜ ＞``). Every other non-ASCII character is ``UTF8-non-ascii`` (RFC 6531 §3.3)."""

_LOCAL_CHAR = rf"[^\x00-\x2a,/:-@\[-^`{{-\x7f{_NOT_IN_ADDRESS}]"
"""A dot-atom character of a local part: ``A-Z a-z 0-9 _ + - .`` or non-ASCII text."""
_LABEL_CHAR = rf"[^\x00-\x2c./:-@\[-`{{-\x7f{_NOT_IN_ADDRESS}]"
"""A character of a domain label: ``A-Z a-z 0-9 -`` or non-ASCII text."""
_ESCAPE = r"%(?!40)[0-9A-Fa-f]{2}"
"""A percent-escape other than ``%40`` (which stands for the ``@``)."""

_LOCAL = (
    rf"(?<![^\x00-\x24\x26-\x2a,/:-@\[-^`{{-\x7f{_NOT_IN_ADDRESS}])(?<!{_LOCAL_CHAR}')"
    rf"(?!')(?:{_LOCAL_CHAR}++|%(?!40)|'(?={_LOCAL_CHAR}))++"
)
"""A dot-atom local part, starting where no local-part character, ``%`` or apostrophe inside a
word stands before it: one start per run of them."""
_QUOTED = r"\"(?:[^\"\\\r\n]|\\[^\r\n]){1,62}+\""
"""A quoted local part (RFC 5322 §3.2.4 quoted-string on one line), 64 characters at most."""
_LABEL = rf"(?:{_LABEL_CHAR}++|{_ESCAPE})++"
_TLD = rf"(?:[Xx][Nn]--[A-Za-z0-9-]++|(?:[A-Za-z]|[^\x00-\x7f{_NOT_IN_ADDRESS}]){{2,}}+)"
_DOMAIN = (
    rf"(?:\[[!-Z^-~]{{1,253}}+\]"
    rf"|{_LABEL}(?:\.{_LABEL})*\.{_TLD}(?!{_LABEL_CHAR}|{_ESCAPE}))"
)
"""A domain literal, or labels whose last one (given back one label at a time) is a top-level
domain that no label character follows."""

EMAIL = rf"(?:{_LOCAL}|{_QUOTED})(?:@|%40){_DOMAIN}"
"""An email address (see the module docstring); no capturing groups."""


def address_key(address: str) -> str:
    """The form all spellings of ``address`` (a match of :data:`EMAIL`) share: percent-decoded
    (RFC 3986 §2.1), ``xn--`` labels of the domain decoded to Unicode (RFC 3492; a label that
    is no A-label is kept), NFC (Unicode normalization form C), lower case. Used to hash an
    address and to give one person one pseudonym."""
    decoded = unquote(address)
    local, _, domain = decoded.rpartition("@")
    if "xn--" in domain.lower():
        domain = ".".join(_u_label(label) for label in domain.split("."))
    return unicodedata.normalize("NFC", f"{local}@{domain}").lower()


def _u_label(label: str) -> str:
    """``label`` decoded from its ``xn--`` A-label form (RFC 3492), or as it is when it is no
    A-label (it does not decode, or decodes to ASCII only: RFC 5890 §2.3.2.1)."""
    if not label.lower().startswith("xn--"):
        return label
    try:
        decoded = label[4:].encode("ascii").decode("punycode")
    except (UnicodeError, ValueError):
        return label
    return label if decoded.isascii() else decoded
