"""Personal data in a prompt becomes per-call pseudonyms, and the model's answer is mapped back.

One :class:`Pseudonymiser` serves one call. :meth:`~Pseudonymiser.pseudonymise` replaces, in the
text it is given:

- email addresses with ``<personN@example.invalid>`` (``example.invalid`` can never be delivered:
  RFC 2606 §2, RFC 6761 §6.4); angle brackets around the address are absorbed, not doubled;
- display names in ``Name <address>`` and ``"Name" <address>`` (RFC 5322 §3.4 name-addr, as in
  address headers, quoted attributions and calendar attendees) with ``<personN>``, the same ``N``
  as the address; a name of two or more words is also replaced wherever else it occurs;
- phone numbers that ``phonenumbers`` finds valid (``Leniency.VALID``) in an international
  format or in one of the configured regions (ISO 3166-1 alpha-2) with ``<phone-N>``.

``N`` counts from 1 per kind, in order of first appearance; the same address (case-insensitive) or
number (E.164) always gets the same pseudonym within the call. The mapping lives only in this
object: it has no ``repr`` of its values and is never logged, ledgered or stored.

:meth:`~Pseudonymiser.restore` maps the pseudonyms in a decoded JSON answer back to the original
text (``<personN@example.invalid>`` right after a name pseudonym comes back as ``<address>``, else
as the bare address). Anything that looks like a pseudonym but is not one this call handed out
(an invented ``<person9>``, a mangled ``<person1@example.com>``, ``<phone-1 >``) is left as it is
and listed in :attr:`~Pseudonymiser.unresolved`; it is never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import phonenumbers

from opsgate.security.sanitizer import EMAIL

DOMAIN = "example.invalid"

_FIRST = r"[^\W\d_a-z][\w'’.-]*"
_WORD = r"[^\W\d_][\w'’.-]*"
_PEOPLE = re.compile(
    rf"(?:\"(?P<quoted>[^\"\n<>]{{1,80}})\""
    rf"|(?<![\w'’.-])(?P<name>{_FIRST}(?:[ \t]+{_WORD}){{0,3}}))"
    rf"[ \t]*<(?P<named>{EMAIL})>"
    rf"|<?(?P<bare>{EMAIL})>?"
)
"""A name-addr (quoted or plain display name of up to four words, the first capitalised) or a
lone address, with or without angle brackets."""

_LOOKS_LIKE = re.compile(
    r"<\s*(?:person|phone)[\s_-]*\d+[^<>\s]{0,40}\s*>|(?<![\w.-])person\d+@example\.[A-Za-z]+\b"
    r"|(?<![\w-])phone-\d+\b",
    re.IGNORECASE,
)
"""Pseudonyms, and what a model makes of them when it mangles one."""
_EXACT = re.compile(rf"<person(\d+)>|<?person(\d+)@{re.escape(DOMAIN)}>?|<phone-(\d+)>")
_NAME_BEFORE = re.compile(r"<person\d+>[ \t]?$")
_VALID, _E164 = phonenumbers.Leniency.VALID, phonenumbers.PhoneNumberFormat.E164
_DIGIT_RUN = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?)?"
    r"|(?P<run>(?<![\w.])[+(]?\d(?:[ \t.()/-]{0,3}\d){6,16}(?![\w.]?\d)"
    r"(?:[ \t]*(?:ext\.?|x|#)[ \t]*\d{1,6})?)",
    re.IGNORECASE,
)
"""Where a phone number can be (group ``run``): 7 to 17 digits (E.164 has at most 15, plus a
trunk prefix) with separators between them, not inside a longer run; ISO 8601 dates and times
are skipped whole. Only runs are handed to ``phonenumbers``, whose matcher costs milliseconds on
a long text."""


class Pseudonymiser:
    """Pseudonyms for the personal data of one call; see the module docstring.

    ``phone_regions`` are ISO 3166-1 alpha-2 codes ``phonenumbers`` supports.
    """

    def __init__(self, phone_regions: Iterable[str] = ("US", "GB")) -> None:
        self._regions = tuple(phone_regions)
        self._people: dict[str, int] = {}  # lower-cased address -> N
        self._addresses: dict[int, str] = {}  # N -> address as first seen
        self._names: dict[int, str] = {}  # N -> display name as first seen
        self._phones: dict[str, int] = {}  # E.164 -> N
        self._phone_texts: dict[int, str] = {}  # N -> number as first seen
        self.unresolved: list[str] = []

    @property
    def counts(self) -> dict[str, int]:
        """How many distinct values of each kind were pseudonymised (``email``, ``name``,
        ``phone``)."""
        return {"email": len(self._addresses), "name": len(self._names), "phone": len(self._phones)}

    def pseudonymise(self, text: str) -> str:
        """``text`` with addresses, display names and phone numbers replaced by pseudonyms."""
        text = _PEOPLE.sub(self._person, text)
        text = self._other_mentions(text)
        return self._phone_numbers(text)

    def restore(self, data: object) -> object:
        """A copy of ``data`` (decoded JSON: dicts, lists, strings, scalars) with this call's
        pseudonyms mapped back; unknown or mangled ones are kept and added to :attr:`unresolved`."""
        if isinstance(data, str):
            return _LOOKS_LIKE.sub(self._original, data)
        if isinstance(data, dict):
            return {key: self.restore(value) for key, value in data.items()}
        if isinstance(data, list):
            return [self.restore(value) for value in data]
        return data

    def __repr__(self) -> str:
        return f"Pseudonymiser(counts={self.counts})"

    # pseudonymise -------------------------------------------------------------------------------
    def _person(self, m: re.Match[str]) -> str:
        address = m.group("named") or m.group("bare")
        n = self._people.setdefault(address.lower(), len(self._people) + 1)
        self._addresses.setdefault(n, address)
        pseudonym = f"<person{n}@{DOMAIN}>"
        name = (m.group("quoted") or m.group("name") or "").strip()
        if not name:
            return pseudonym
        self._names.setdefault(n, name)
        return f"<person{n}> {pseudonym}"

    def _other_mentions(self, text: str) -> str:
        names = {name: n for n, name in self._names.items() if len(name.split()) > 1}
        if not names:
            return text
        alternation = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
        pattern = re.compile(rf"(?<![\w'’.-])(?:{alternation})(?![\w'’-])")
        return pattern.sub(lambda m: f"<person{names[m.group()]}>", text)

    def _phone_numbers(self, text: str) -> str:
        spans: list[tuple[int, int, str]] = []
        for candidate in _DIGIT_RUN.finditer(text):
            if candidate.group("run") is None:
                continue
            for region in self._regions:
                for found in phonenumbers.PhoneNumberMatcher(candidate.group(), region, leniency=_VALID):
                    start, end = candidate.start() + found.start, candidate.start() + found.end
                    if not any(s < end and start < e for s, e, _ in spans):
                        spans.append((start, end, phonenumbers.format_number(found.number, _E164)))
        for start, end, e164 in sorted(spans):
            n = self._phones.setdefault(e164, len(self._phones) + 1)
            self._phone_texts.setdefault(n, text[start:end])
        for start, end, e164 in sorted(spans, reverse=True):
            text = f"{text[:start]}<phone-{self._phones[e164]}>{text[end:]}"
        return text

    # restore ------------------------------------------------------------------------------------
    def _original(self, m: re.Match[str]) -> str:
        found = m.group()
        exact = _EXACT.fullmatch(found)
        original = self._lookup(exact, m) if exact else None
        if original is None:
            if found not in self.unresolved:
                self.unresolved.append(found)
            return found
        return original

    def _lookup(self, exact: re.Match[str], m: re.Match[str]) -> str | None:
        name_n, address_n, phone_n = exact.groups()
        if name_n is not None:
            return self._names.get(int(name_n))
        if phone_n is not None:
            return self._phone_texts.get(int(phone_n))
        address = self._addresses.get(int(address_n))
        if address is None:
            return None
        bracketed = m.group().startswith("<") and m.group().endswith(">")
        after_name = bracketed and _NAME_BEFORE.search(m.string, max(0, m.start() - 16), m.start())
        return f"<{address}>" if after_name else address
