"""Personal data in a prompt becomes per-call pseudonyms, and the model's answer is mapped back.

One :class:`Pseudonymiser` serves one call. :meth:`~Pseudonymiser.pseudonymise` replaces, in the
text it is given:

- email addresses (:data:`opsgate.security.addresses.EMAIL`: quoted local parts, UTF-8, domain
  literals and ``%40`` in URLs too) with ``<personN@example.invalid>`` (``example.invalid`` can
  never be delivered: RFC 2606 §2, RFC 6761 §6.4); angle brackets around the address are
  absorbed, not doubled;
- display names in ``Name <address>`` and ``"Name" <address>`` (RFC 5322 §3.4 name-addr, as in
  address headers, quoted attributions and calendar attendees) with ``<personN>``, the same ``N``
  as the address. An unquoted name is the run of name words directly before ``<address>``
  (:func:`split_name`): capitalised words (any script), initials and titles (``J.``, ``Dr.``),
  and lowercase particles inside a name (``van der``, ``de la``); a lowercase word, a word ending
  a sentence or a word of :data:`NOT_NAMES` (``Please``, ``Email``, ``Dear``) ends it, so
  ``Please email Anna Berg <a@x>`` keeps ``Please email`` and takes ``Anna Berg``;
- the display names the caller already knows (``people``: the parsed To, Cc, Reply-To and From
  headers, calendar organizers and attendees), which need not stand next to their address in
  the text;
- every other occurrence of a name of two or more words, in each of its written forms
  (:func:`name_forms`: ``Berg, Anna`` is also ``Anna Berg`` and the other way round; ``Dr. Li
  Wei`` is also ``Li Wei``), also followed by ``'s``, however it is typed
  (:func:`mention_pattern`: case, accents composed or not, whitespace, punctuation around it);
- phone numbers that ``phonenumbers`` finds valid (``Leniency.VALID``) in an international
  format or in one of the configured regions (ISO 3166-1 alpha-2) with ``<phone-N>``.

``N`` counts from 1 per kind, in order of first appearance, skipping the numbers of
pseudonym-shaped text the input itself holds (:meth:`~Pseudonymiser.reserve`); the same address
(in any spelling: case, ``%40``, ``xn--`` labels; :func:`~opsgate.security.addresses.address_key`)
or number (E.164) always gets the same pseudonym within the call. The mapping lives only in this
object: it has no ``repr`` of its values and is never logged, ledgered or stored.

:meth:`~Pseudonymiser.restore` maps the pseudonyms in a decoded JSON answer back to the original
text (``<personN@example.invalid>`` right after a name pseudonym comes back as ``<address>``, else
as the bare address; ``<personN>`` as :func:`canonical_name`, ``Given Family``). Anything that
looks like a pseudonym but is not one this call handed out (an invented ``<person9>``, a mangled
``<person1@example.com>``, ``<phone-1 >``) is left as it is and listed in
:attr:`~Pseudonymiser.unresolved`, unless the input itself held it; it is never guessed.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable

import phonenumbers

from opsgate.security.addresses import EMAIL, address_key

DOMAIN = "example.invalid"

MAX_NAME_WORDS = 5
"""The most words an unquoted display name has (``Maria de la Cruz Lopez``)."""
_WORD = r"[^\W\d_][\w'’.-]*"
_PEOPLE = re.compile(
    rf"(?:\"(?P<quoted>[^\"\n<>]{{1,80}})\""
    rf"|(?<![\w'’.-])(?P<words>{_WORD}(?:[ \t]+{_WORD}){{0,{MAX_NAME_WORDS}}}))"
    rf"(?P<gap>[ \t]*)<(?P<named>{EMAIL})>"
    rf"|<?(?P<bare>{EMAIL})>?"
)
"""A name-addr (a quoted display name, or up to six words of any case before ``<address>``, of
which :func:`split_name` takes the name) or a lone address, with or without angle brackets."""

NOT_NAMES = frozenset({
    "please", "pls", "email", "e-mail", "mail", "write", "send", "ask", "tell", "contact", "call",
    "reply", "respond", "forward", "fwd", "fw", "re", "invite", "cc", "bcc", "to", "from", "dear",
    "hi", "hello", "hey", "thanks", "thank", "and", "or", "with", "also", "then", "for", "by",
    "the", "a", "an", "attendee", "attendees", "organizer", "organiser", "via", "ping", "remind",
    "message", "let", "loop", "copy", "add", "include", "notify", "inform", "sender",
    "recipient", "recipients", "me", "my", "our", "your", "team", "cheers", "regards", "best",
    "sincerely", "subject", "date", "hallo", "liebe", "lieber", "hej", "bonjour", "hola", "olá",
    "ciao", "cara", "caro", "querida", "querido", "chère", "cher", "beste", "schreib",
    "schreibe", "bitte", "écris", "écrivez", "escribe", "escreva", "scrivi", "mailen",
})  # fmt: skip
"""Capitalised words that start or join a sentence before an address (``Please email``,
``Dear``, ``Cc``) and are never part of the display name after them (compared in lower case)."""
PARTICLES = frozenset({
    "van", "von", "der", "den", "de", "del", "della", "di", "da", "das", "dos", "du", "la", "le",
    "ter", "ten", "bin", "binti", "al", "el", "y", "zu", "af", "av",
})  # fmt: skip
"""Lowercase words inside a name (``Ludwig van Beethoven``, ``Maria de la Cruz``); a name does
not start with one (a surname standing alone is written ``Van der Berg``)."""
TITLES = frozenset({"dr.", "dr", "mr.", "mr", "mrs.", "mrs", "ms.", "ms", "prof.", "prof", "mx.",
                    "sir", "dame", "jr.", "sr."})
"""Titles a display name may carry (``Dr. Li Wei``); :func:`name_forms` also drops a leading one."""
_INITIALS = re.compile(r"(?:[^\W\d_]\.){1,3}")
_REMARK = re.compile(r"\([^()]*\)")


def _name_word(word: str) -> bool:
    """Whether ``word`` can be a word of a display name other than a particle."""
    lowered = word.lower()
    if lowered in TITLES or (_INITIALS.fullmatch(word) and word[0].isupper()):
        return True
    if word.endswith(".") or lowered in NOT_NAMES:
        return False  # the end of a sentence (``CFO.``), or a sentence word (``Please``)
    return not word[0].islower()  # capitalised, or a script without case (李伟)


def split_name(words: str) -> tuple[str, str]:
    """``(prose, name)``: ``words`` (written directly before ``<address>``) split where the
    display name starts. The name is the trailing run of at most :data:`MAX_NAME_WORDS` name
    words (:func:`_name_word`) and :data:`PARTICLES` between them, starting with a name word; ``prose`` is everything
    before it, with the whitespace that separated them (``"Please email Anna Berg"`` ->
    ``("Please email ", "Anna Berg")``). ``name`` is empty when the last word is no name word."""
    parts = re.split(r"([ \t]+)", words)  # word, gap, word, ...
    start = len(parts)
    for i in range(len(parts) - 1, -1, -2):
        taken = (len(parts) - i + 1) // 2
        if taken > MAX_NAME_WORDS:
            break
        if _name_word(parts[i]):
            start = i
        elif not (parts[i] in PARTICLES and start < len(parts)):
            break
    return "".join(parts[:start]), "".join(parts[start:])


def name_forms(name: str) -> list[str]:
    """The ways ``name`` is written in running text, each of two or more words (a single word is
    too often an ordinary one to be replaced on its own): the name itself, without a remark in
    brackets (``Li, Wei (CFO)`` -> ``Li, Wei``), ``First Last`` for ``Last, First``, each
    without a leading title (``Dr. Li Wei`` -> ``Li Wei``), and ``Family, Given`` for a title-less
    ``Given Family`` (``Anna Berg`` -> ``Berg, Anna``; the family name is the last word with the
    :data:`PARTICLES` before it: ``Maria de la Cruz`` -> ``de la Cruz, Maria``)."""
    name = " ".join(name.split())
    forms = [name, " ".join(_REMARK.sub(" ", name).split()).strip(" ,")]
    for form in list(forms):
        last, comma, first = form.partition(", ")
        if comma and first and "," not in first and "(" not in form:
            forms.append(f"{first} {last}")
    for form in list(forms):
        title, _, rest = form.partition(" ")
        if title.lower() in TITLES and rest:
            forms.append(rest)
    for form in list(forms):
        words = form.split(" ")
        if "," in form or "(" in form or words[0].lower() in TITLES or len(words) < 2:
            continue
        family = len(words) - 1
        while family > 1 and words[family - 1] in PARTICLES:
            family -= 1
        forms.append(f"{' '.join(words[family:])}, {' '.join(words[:family])}")
    return [form for form in dict.fromkeys(forms) if len(form.split()) > 1]


def canonical_name(name: str) -> str:
    """``name`` as a pseudonym is restored (docs/privacy.md): without a remark in brackets and
    ``Given Family`` where it was written ``Family, Given`` (``O'Brien, Zoë`` -> ``Zoë O'Brien``,
    ``Li, Wei (CFO)`` -> ``Wei Li``); a name that is only a remark is kept as it is."""
    plain = " ".join(_REMARK.sub(" ", name).split()).strip(" ,")
    last, comma, first = plain.partition(", ")
    if comma and first and "," not in first:
        return f"{first} {last}"
    return plain or name


_GAP = r"(?:[\s\u200b]|(?<=[\n>])>)"
"""One character between the words of a name: any run of whitespace (NBSP, thin space, tab, line break), zero
width spaces, and the ``>`` of quoted lines at the start of a wrapped line."""
_LETTER = "[^\\W_]"
_BEFORE = rf"(?<!{_LETTER})(?<!{_LETTER}[-\u2010\u2011'\u2019])"
_AFTER = rf"(?![\u0300-\u036f]|{_LETTER}|[-\u2010\u2011]{_LETTER}|['\u2019](?!s(?!{_LETTER})){_LETTER})"
"""A mention is not part of a longer word: no letter or digit (Unicode categories L and N, as
``[^\\W_]``) touches it, nor joins it by a hyphen or apostrophe (``Anna Berg-Schmidt``,
``Marie-Anna Berg``), except the possessive ``'s``; punctuation, quotes and underscores may
(``'Anna Berg'``, ``_Anna Berg_``, ``-Anna Berg``, ``ready.Anna Berg``)."""
_RUNS = re.compile(r"[\W_]+")


def _folded(text: str) -> str:
    """``text`` in compatibility-composed form, case folded (Unicode NFKC, then ``casefold``):
    the view :func:`mention_pattern`'s variants all have in common, used to preselect names."""
    return unicodedata.normalize("NFKC", text).casefold()


def _char_pattern(char: str) -> str:
    """The ways ``char`` (of a name in NFC) can be written: composed or decomposed (NFD, as
    macOS Mail writes), a fullwidth ASCII letter, any apostrophe or hyphen for ``'`` and ``-``;
    letter case is the pattern's (``re.IGNORECASE``)."""
    if char in "'\u2019\u02bc":
        return "['\u2019\u02bc]"
    if char in "-\u2010\u2011":
        return "[-\u2010\u2011]"
    variants = {char, unicodedata.normalize("NFD", char)}
    if char.isascii() and char.isalnum():
        variants.add(chr(ord(char) + 0xFEE0))
    return "(?:" + "|".join(re.escape(v) for v in sorted(variants, key=len, reverse=True)) + ")"


def mention_pattern(forms: Iterable[str]) -> re.Pattern[str]:
    """One pattern for every written variant of ``forms`` (:func:`name_forms`): any letter case,
    composed or decomposed accents, fullwidth letters, curly apostrophes, and any whitespace run
    between words (a name wrapped across lines, two spaces, NBSP) or none after a comma
    (``Berg,Anna``); bounded by :data:`_AFTER` and the like before. A match is the exact span of
    the original text. Longer forms are tried first. Built once per set of forms (the same
    people meet the same forms call after call)."""
    return _mention_pattern(tuple(sorted(set(forms), key=lambda form: (-len(form), form))))


@functools.lru_cache(maxsize=512)
def _mention_pattern(forms: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = []
    for form in forms:
        words = unicodedata.normalize("NFC", form).split()
        parts = []
        for i, word in enumerate(words):
            if i:
                parts.append(_GAP + ("*" if words[i - 1].endswith(",") else "+"))
            parts.append("".join(_char_pattern(c) for c in word))
        alternatives.append("".join(parts))
    return re.compile(rf"{_BEFORE}(?:{'|'.join(alternatives)}){_AFTER}", re.IGNORECASE)


@functools.lru_cache(maxsize=4096)
def _forms_and_words(name: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Each of :func:`name_forms` of ``name`` with its :func:`_words` (the same names recur in
    call after call: a sender, a calendar's attendees)."""
    return tuple((form, _words(form)) for form in name_forms(name))


def _words(text: str) -> tuple[str, ...]:
    """The letter and digit runs of ``text`` in the :func:`_folded` view: equal for every variant
    :func:`mention_pattern` matches of one form (``Anna\u00a0BERG`` and ``anna berg``), and each
    run a substring of the folded text a variant occurs in."""
    return tuple(run for run in _RUNS.split(_folded(text)) if run)


_LOOKS_LIKE = re.compile(
    r"<\s*(?:person|phone)[\s_-]*\d+[^<>\s]{0,40}\s*>|(?<![\w.-])person\d+@example\.[A-Za-z]+\b"
    r"|(?<![\w-])phone-\d+\b",
    re.IGNORECASE,
)
"""Pseudonyms, and what a model makes of them when it mangles one."""
_PSEUDONYM_WORD = re.compile(r"person|phone", re.IGNORECASE)
"""What every match of :data:`_LOOKS_LIKE` holds (under the same flags): a string without it is
restored as it is, without the ~40 ns a character that scan costs (issue 21)."""
_EXACT = re.compile(rf"<person(\d+)>|<?person(\d+)@{re.escape(DOMAIN)}>?|<phone-(\d+)>")
_NAME_BEFORE = re.compile(r"<person\d+>[ \t]?$")
_VALID, _E164 = phonenumbers.Leniency.VALID, phonenumbers.PhoneNumberFormat.E164
_SEPARATOR = r"[ \t.()/-]{0,3}"
"""What may stand between two digits of a phone number."""
_DIGIT_RUN = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?)?"
    rf"|(?P<run>(?<![\w.])[+(]?\d(?:{_SEPARATOR}\d){{6,16}}(?![\w.]?\d)"
    r"(?:[ \t]*(?:ext\.?|x|#)[ \t]*\d{1,6})?)",
    re.IGNORECASE,
)
"""Where a phone number can be (group ``run``): 7 to 17 digits (E.164 has at most 15, plus a
trunk prefix) with separators between them, not inside a longer run; ISO 8601 dates and times
are skipped whole. Only runs are handed to ``phonenumbers``, whose matcher costs milliseconds on
a long text."""
_SEVEN_DIGITS = re.compile(rf"\d(?:{_SEPARATOR}\d){{6}}")
"""Seven digits with separators between them, as every ``run`` of :data:`_DIGIT_RUN` starts: a
text without them has no phone number. sre skips to a digit to search for it (~2 us for a
1.2 kB email full of dates and times), where the scan for runs costs ~45 ns a character
(issue 21)."""


class Pseudonymiser:
    """Pseudonyms for the personal data of one call; see the module docstring.

    ``phone_regions`` are ISO 3166-1 alpha-2 codes ``phonenumbers`` supports; ``people`` are
    ``(display name, address)`` pairs the caller parsed (email headers, calendar attendees):
    each name is replaced wherever it occurs (:func:`name_forms`), with the number of its
    address, whether or not the address occurs next to it. Numbers are still handed out in the
    order the text meets them.
    """

    def __init__(
        self, phone_regions: Iterable[str] = ("US", "GB"), people: Iterable[tuple[str, str]] = ()
    ) -> None:
        self._regions = tuple(phone_regions)
        self._known = [(name, address) for name, address in people if name.strip() and address]
        self._people: dict[str, int] = {}  # address_key(address) -> N
        self._addresses: dict[int, str] = {}  # N -> address as first seen
        self._names: dict[int, str] = {}  # N -> display name as first seen
        self._phones: dict[str, int] = {}  # E.164 -> N
        self._phone_texts: dict[int, str] = {}  # N -> number as first seen
        self._last = {"person": 0, "phone": 0}  # the last N handed out of each kind
        self._reserved: dict[str, set[int]] = {"person": set(), "phone": set()}
        self._literals: set[str] = set()  # pseudonym-shaped text the input itself holds
        self.unresolved: list[str] = []

    @property
    def counts(self) -> dict[str, int]:
        """How many distinct values of each kind were pseudonymised (``email``, ``name``,
        ``phone``)."""
        return {"email": len(self._addresses), "name": len(self._names), "phone": len(self._phones)}

    def reserve(self, *texts: str) -> None:
        """Keep the numbers of the pseudonym-shaped text in ``texts`` (``<person2>``,
        ``person2@example.invalid``, ``<phone-1>`` written in the input itself) from being handed
        out, so the model never sees a real person's pseudonym that equals text the input
        already held, and :meth:`restore` leaves that text as it is. Call it with every text of
        the call before the first :meth:`pseudonymise`; :meth:`pseudonymise` reserves its own."""
        for text in texts:
            if "person" not in text and "phone-" not in text:
                continue
            for m in _EXACT.finditer(text):
                name_n, address_n, phone_n = m.groups()
                self._literals.add(m.group())
                self._reserved["phone" if phone_n else "person"].add(int(name_n or address_n or phone_n))

    def pseudonymise(self, text: str) -> str:
        """``text`` with addresses, display names and phone numbers replaced by pseudonyms
        (numbers :meth:`reserve` kept are skipped)."""
        self.reserve(text)
        if "@" in text or "%40" in text:  # every match of _PEOPLE holds an address (its @ may be
            # percent-encoded in a URL); the search costs ~0.6 us a character
            text = _PEOPLE.sub(self._person, text)
        text = self._other_mentions(text)
        return self._phone_numbers(text)

    def restore(self, data: object) -> object:
        """A copy of ``data`` (decoded JSON: dicts, lists, strings, scalars) with this call's
        pseudonyms mapped back; unknown or mangled ones are kept and added to :attr:`unresolved`."""
        if isinstance(data, str):
            return data if _PSEUDONYM_WORD.search(data) is None else _LOOKS_LIKE.sub(self._original, data)
        if isinstance(data, dict):
            return {key: self.restore(value) for key, value in data.items()}
        if isinstance(data, list):
            return [self.restore(value) for value in data]
        return data

    def __repr__(self) -> str:
        return f"Pseudonymiser(counts={self.counts})"

    def mentions_known(self, text: str) -> bool:
        """Whether a form of a known person's name (``people``), written in any of its variants
        (:func:`mention_pattern`), occurs in ``text``."""
        forms = self._mentioned_forms(text)
        return bool(forms) and mention_pattern(form for form, *_ in forms.values()).search(text) is not None

    # pseudonymise -------------------------------------------------------------------------------
    def _fresh(self, kind: str) -> int:
        """The next number of ``kind`` (``person`` or ``phone``) that is not reserved."""
        n = self._last[kind] + 1
        while n in self._reserved[kind]:
            n += 1
        self._last[kind] = n
        return n

    def _number(self, address: str) -> int:
        key = address_key(address)
        if key not in self._people:
            self._people[key] = self._fresh("person")
        return self._people[key]

    def _person(self, m: re.Match[str]) -> str:
        address = m.group("named") or m.group("bare")
        n = self._number(address)
        self._addresses.setdefault(n, address)
        pseudonym = f"<person{n}@{DOMAIN}>"
        if m.group("words") is not None:
            prose, name = split_name(m.group("words"))
            if not name:
                return f"{prose}{m.group('gap')}{pseudonym}"
        else:
            prose, name = "", (m.group("quoted") or "").strip()
            if not name:
                return pseudonym
        self._names.setdefault(n, name)
        return f"{prose}<person{n}> {pseudonym}"

    def _other_mentions(self, text: str) -> str:
        """Every written variant (:func:`mention_pattern`) of every form of every name met next
        to an address or known from ``people`` replaced by its person's name pseudonym; a known
        person gets a number when first met here."""
        forms = self._mentioned_forms(text)
        if not forms:
            return text

        def pseudonym(m: re.Match[str]) -> str:
            _, n, address, name = forms[_words(m.group())]
            if n is None:
                n = self._number(address)
                self._names.setdefault(n, name)
            return f"<person{n}>"

        return mention_pattern(form for form, *_ in forms.values()).sub(pseudonym, text)

    def _mentioned_forms(self, text: str) -> dict[tuple[str, ...], tuple[str, int | None, str, str]]:
        """The forms of names (met next to an address, or known) that may occur in ``text``,
        as ``{words: (form, N or None, address, name)}`` (``words``: :func:`_words`)."""
        found: dict[tuple[str, ...], tuple[str, int | None, str, str]] = {}
        if not (self._names or self._known):
            return found
        folded = _folded(text)
        named = [(n, "", name) for n, name in self._names.items()]
        for n, address, name in [*named, *((None, a, name) for name, a in self._known)]:
            for form, words in _forms_and_words(name):
                if words not in found and all(word in folded for word in words):
                    found[words] = (form, n, address, name)
        return found

    def _phone_numbers(self, text: str) -> str:
        if _SEVEN_DIGITS.search(text) is None:
            return text
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
            if e164 not in self._phones:
                self._phones[e164] = self._fresh("phone")
            self._phone_texts.setdefault(self._phones[e164], text[start:end])
        for start, end, e164 in sorted(spans, reverse=True):
            text = f"{text[:start]}<phone-{self._phones[e164]}>{text[end:]}"
        return text

    # restore ------------------------------------------------------------------------------------
    def _original(self, m: re.Match[str]) -> str:
        found = m.group()
        exact = _EXACT.fullmatch(found)
        original = self._lookup(exact, m) if exact else None
        if original is None:
            if found not in self.unresolved and found not in self._literals:
                self.unresolved.append(found)
            return found
        return original

    def _lookup(self, exact: re.Match[str], m: re.Match[str]) -> str | None:
        name_n, address_n, phone_n = exact.groups()
        if name_n is not None:
            name = self._names.get(int(name_n))
            return None if name is None else canonical_name(name)
        if phone_n is not None:
            return self._phone_texts.get(int(phone_n))
        address = self._addresses.get(int(address_n))
        if address is None:
            return None
        bracketed = m.group().startswith("<") and m.group().endswith(">")
        after_name = bracketed and _NAME_BEFORE.search(m.string, max(0, m.start() - 16), m.start())
        return f"<{address}>" if after_name else address
