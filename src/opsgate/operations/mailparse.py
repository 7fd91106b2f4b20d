"""Turn a raw RFC 822 / MIME message into the few fields the email operations send to a model.

Parsing follows RFC 5322 / RFC 2045-2049 through the standard library ``email`` package with
``policy.default`` (RFC 2047 encoded headers and RFC 2231 parameters decoded by it). What we add:

- body text: ``text/plain`` parts, or ``text/html`` converted to text in one pass of the
  standard library's ``html.parser`` (:func:`html_to_text`) when a part has no plain alternative; ``multipart/alternative`` yields one part;
  forwarded ``message/rfc822`` parts are included under a "Forwarded message" line;
- charsets (:func:`decode_text`): the declared charset, except that bytes declared as ASCII or a
  Western single-byte charset which are valid UTF-8 are read as UTF-8 (the common mislabel); an
  unknown or wrong charset falls back to UTF-8, then Windows-1252, then to the declared one with
  ``errors="replace"``;
- attachments: file name, MIME type and decoded size only — never their bytes;
- display names: ``email.headerregistry``'s, and for an address written in the RFC 5322 comment
  form ``anna@corp.example (Anna Berg)``, which it drops, the comment as
  ``email.utils.getaddresses`` reads it (:func:`_comment_names`);
- reply chains (:func:`split_quoted`): ``>``-quoted lines, "On ... wrote:" attributions and
  everything after an "Original Message"/Outlook header block are history, the rest is new text;
- header values that reach a prompt are clipped at :data:`MAX_HEADER_CHARS` (:func:`clip_header`):
  a forwarded message's From and Subject here, the message's own headers where the prompt is
  rendered (:func:`opsgate.operations.email.render_email`);
- 8-bit header bytes (raw UTF-8 as RFC 6532 allows, or a legacy charset such as Latin-1 with no
  RFC 2047 encoding) are decoded like an undeclared text part (:func:`decode_text`: UTF-8, else
  Windows-1252, else with U+FFFD replacements) before the header is parsed
  (:meth:`_BoundedPolicy.header_source_parse`); an RFC 2047 word whose bytes do not fit its
  charset, which the standard library keeps as lone surrogates, is decoded the same way
  (:func:`_no_surrogates`). No string the parser returns holds a surrogate: the first strict
  UTF-8 encode downstream (token counting, metering, JSON) raised ``UnicodeEncodeError``, a 500;
- a header value longer than :data:`MAX_PARSED_HEADER_CHARS` is cut to that length *before* the
  standard library parses it (:class:`_BoundedPolicy`): its structured-header parser copies the
  rest of the value at every token, so a 600,000-character From took 34 s of CPU to parse;
- nesting: the standard library parses nested multipart parts, forwarded messages and header
  comments (``(a (b (c ...)))``) by recursion, as does :func:`_collect`; a message nested past
  what the interpreter's stack allows (about 1,000 multipart levels, or 1,000 comment levels in
  one header) is an :class:`~opsgate.errors.InvalidInput` on ``raw`` that says so, not a
  ``RecursionError`` turned into a 422 with a logged traceback. The work is bounded by the body's
  size (:data:`opsgate.pipeline.MAX_BODY_BYTES`).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.policy import EmailPolicy
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import getaddresses
from html.parser import HTMLParser


from opsgate.operations.common import invalid

MAX_HEADER_CHARS = 255
"""The most characters of one header value a prompt carries (From's display name and address,
each To/Cc address, Date, a forwarded message's From and Subject): an RFC 5321 address fits in
254, a date in about 40, so only a forged or broken header is cut. Subject has its own limit
(``MAX_SUBJECT_CHARS``)."""
HEADER_CUT_MARK = "[...]"
MAX_PARSED_HEADER_CHARS = 16_384
"""The most characters of one raw header value that are parsed (see the module docstring): far
above any real header (RFC 5322 lines stop at 998 characters; 500 recipients fit), so only a
forged header loses its tail."""

IDENTITY_HEADERS = ("from", "to", "cc", "subject", "date", "message-id", "mime-version")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_NOT_ESCAPED_BYTE = re.compile("[\ud800-\udc7f\udd00-\udfff]")
_WESTERN = {"us-ascii", "ascii", "iso-8859-1", "latin-1", "latin1", "windows-1252", "cp1252"}
_ATTRIBUTION = re.compile(r"^(on\b.{0,200}\bwrote:|.{0,120}\bwrote:|le\b.{0,200}a écrit\s?:|am\b.{0,200}schrieb\s?.{0,80}:)\s*$", re.IGNORECASE)
_ORIGINAL = re.compile(r"^\s*(-{2,}\s*(original message|forwarded message|ursprüngliche nachricht|message d'origine)\s*-{2,}|_{10,})\s*$", re.IGNORECASE)
_HIDDEN = frozenset({"script", "style", "head", "title", "noscript", "template"})
_BLOCK_TAGS = [
    "p", "div", "li", "tr", "table", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6",
    "blockquote", "pre", "hr", "section", "article", "header", "footer",
]
_OUTLOOK_FROM = re.compile(r"^\s*(from|von|de):\s.+$", re.IGNORECASE)
_OUTLOOK_NEXT = re.compile(r"^\s*(sent|date|gesendet|envoyé|to|an|à|subject|betreff|objet):\s", re.IGNORECASE)


@dataclass(frozen=True)
class Attachment:
    """One attachment: ``filename`` (or None), ``content_type`` (``type/subtype``), ``size_bytes``."""

    filename: str | None
    content_type: str
    size_bytes: int


@dataclass(frozen=True)
class ParsedEmail:
    """The parts of a message the operations use. Addresses are ``addr-spec`` strings.

    ``new_text`` is the author's own text, ``quoted_text`` the reply history (newest first, as in
    the message), ``html_only`` whether the text came from HTML because no plain part existed.
    ``people`` are the ``(display name, addr-spec)`` pairs of every named address in From,
    Reply-To, To and Cc, in that order.
    """

    subject: str
    sender: str | None
    sender_name: str | None
    reply_to: list[str]
    to: list[str]
    cc: list[str]
    date: str | None
    message_id: str | None
    references: list[str]
    new_text: str
    quoted_text: str
    attachments: list[Attachment] = field(default_factory=list)
    html_only: bool = False
    people: list[tuple[str, str]] = field(default_factory=list)


class _BoundedPolicy(EmailPolicy):
    """``policy.default`` that parses at most :data:`MAX_PARSED_HEADER_CHARS` characters of a
    header value (whatever the message part: the parser itself reads each part's Content-Type)
    and decodes a header's 8-bit bytes (see the module docstring) as it is read."""

    def header_source_parse(self, sourcelines: list[str]) -> tuple[str, str]:
        name, value = super().header_source_parse(sourcelines)
        return name, _no_surrogates(value)

    def header_fetch_parse(self, name: str, value: str) -> str:
        if isinstance(value, str) and len(value) > MAX_PARSED_HEADER_CHARS:
            value = value[:MAX_PARSED_HEADER_CHARS]
        return super().header_fetch_parse(name, value)


_POLICY = _BoundedPolicy()


def parse_email(raw: str) -> ParsedEmail:
    """Parse ``raw`` (the message as text; non-ASCII characters are taken as UTF-8 bytes, a
    ``surrogateescape`` code point U+DC80..U+DCFF as the byte it stands for, any other lone
    surrogate as U+FFFD). No string in the result holds a surrogate.

    Raises :class:`opsgate.errors.InvalidInput` when the text has none of the headers From, To,
    Cc, Subject, Date, Message-ID or MIME-Version: it is then not an RFC 822 / MIME message; or
    when it nests too deeply to be read (see the module docstring).
    """
    data = _NOT_ESCAPED_BYTE.sub("\ufffd", raw).encode("utf-8", "surrogateescape")
    try:
        return _parse(data)
    except RecursionError:
        raise invalid(
            "the 'raw' field nests MIME parts, forwarded messages or header comments too deeply "
            "to be read",
            "raw",
        ) from None


def _parse(data: bytes) -> ParsedEmail:
    msg = BytesParser(policy=_POLICY).parsebytes(data)
    if not any(_header(msg, name) for name in IDENTITY_HEADERS):
        raise invalid(
            "the 'raw' field is not an RFC 822 message: no From, To, Cc, Subject, Date, "
            "Message-ID or MIME-Version header was found before the first blank line",
            "raw",
        )
    texts: list[tuple[str, str]] = []
    attachments: list[Attachment] = []
    _collect(msg, texts, attachments)
    kinds = {kind for kind, text in texts if text.strip()}
    new_text, quoted = split_quoted("\n\n".join(text for _, text in texts if text.strip()))
    sender = _addresses(msg, "from")
    named = [a for header in ("from", "reply-to", "to", "cc") for a in _addresses(msg, header)]
    return ParsedEmail(
        subject=_header(msg, "subject"),
        sender=sender[0].addr_spec if sender else None,
        sender_name=(sender[0].display_name or None) if sender else None,
        reply_to=[a.addr_spec for a in _addresses(msg, "reply-to")],
        to=[a.addr_spec for a in _addresses(msg, "to")],
        cc=[a.addr_spec for a in _addresses(msg, "cc")],
        date=_header(msg, "date") or None,
        message_id=_header(msg, "message-id") or None,
        references=_header(msg, "references").split(),
        new_text=new_text,
        quoted_text=quoted,
        attachments=attachments,
        html_only=kinds == {"html"},
        people=[(a.display_name, a.addr_spec) for a in named if a.display_name.strip()],
    )


def clip_header(value: str) -> tuple[str, bool]:
    """``value`` cut to at most :data:`MAX_HEADER_CHARS` characters, the last of them
    :data:`HEADER_CUT_MARK` when it was cut, and whether it was. Stays on one line."""
    if len(value) <= MAX_HEADER_CHARS:
        return value, False
    return value[: MAX_HEADER_CHARS - len(HEADER_CUT_MARK)] + HEADER_CUT_MARK, True


def decode_text(payload: bytes, declared: str | None) -> str:
    """Decode a text part's bytes; see the module docstring for the charset rules."""
    label = (declared or "us-ascii").strip().lower()
    if label in _WESTERN and not payload.isascii():
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            label = "windows-1252" if label in {"us-ascii", "ascii"} else label
    try:
        codecs.lookup(label)
    except LookupError:
        label = "utf-8"
    for candidate in (label, "utf-8", "windows-1252"):
        try:
            return payload.decode(candidate)
        except UnicodeDecodeError:
            continue
    return payload.decode(label, errors="replace")


def _no_surrogates(value: str) -> str:
    """``value`` with its lone surrogates (bytes the standard library could not decode, kept as
    ``surrogateescape`` code points U+DC80..U+DCFF; any other surrogate becomes U+FFFD) decoded
    with the rest of the value's bytes by :func:`decode_text` with no declared charset."""
    if value.isascii() or not _LONE_SURROGATE.search(value):
        return value
    data = _NOT_ESCAPED_BYTE.sub("\ufffd", value).encode("utf-8", "surrogateescape")
    return decode_text(data, None)


def html_to_text(html: str) -> str:
    """Visible text of an HTML document: scripts, styles and head removed; block elements
    (paragraphs, divs, list items, table rows, headings, ``<br>``) end lines, inline ones don't.

    One pass of the standard library's event parser (:class:`_TextOfHtml`), linear in the
    document: BeautifulSoup's tree, which this replaced, took time quadratic in the nesting depth
    (5,000 nested ``<div>`` 1.8 s, 20,000 (220 KB) 52 s)."""
    reader = _TextOfHtml()
    reader.feed(html)
    reader.close()
    lines = (" ".join(line.split()) for line in "".join(reader.text).splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


class _TextOfHtml(HTMLParser):
    """Collects :func:`html_to_text`'s text: character data outside :data:`_HIDDEN` elements,
    a line break at each block element's start and end tag and at each ``<br>``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self.hidden += 1
        elif tag in _BLOCK_TAGS or tag == "br":
            self.text.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in _BLOCK_TAGS:
            self.text.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.text.append(data)


def split_quoted(text: str) -> tuple[str, str]:
    """Split a body into ``(new_text, quoted_history)``; see the module docstring for the rules.

    Interleaved answers between quoted blocks stay in ``new_text``; attribution lines move to the
    history; both parts keep their original line order.
    """
    lines = text.splitlines()
    new: list[str] = []
    old: list[str] = []
    for i, line in enumerate(lines):
        if _ORIGINAL.match(line) or _outlook_block(lines, i):
            old.extend(lines[i:])
            break
        if line.lstrip().startswith(">") or (_ATTRIBUTION.match(line.strip()) and _quote_follows(lines, i)):
            old.append(line)
        else:
            new.append(line)
    return "\n".join(new).strip(), "\n".join(old).strip()


def _quote_follows(lines: list[str], i: int) -> bool:
    following = [line for line in lines[i + 1 : i + 4] if line.strip()]
    return bool(following) and following[0].lstrip().startswith(">")


def _outlook_block(lines: list[str], i: int) -> bool:
    if not _OUTLOOK_FROM.match(lines[i]) or i == 0:
        return False
    following = lines[i + 1 : i + 4]
    return sum(1 for line in following if _OUTLOOK_NEXT.match(line)) >= 2


def _header(msg: Message, name: str) -> str:
    try:
        value = msg.get(name)
    except (ValueError, IndexError, TypeError):
        return ""
    return _no_surrogates(" ".join(str(value).split())) if value is not None else ""


def _addresses(msg: Message, name: str) -> list[Address]:
    """The addresses of header ``name``; one written ``addr (Name)`` gets ``Name`` as its display
    name (:func:`_comment_names`)."""
    try:
        value = msg.get(name)
        found = [a for a in getattr(value, "addresses", ()) if a.addr_spec and a.addr_spec != "<>"]
    except (ValueError, IndexError, TypeError, AttributeError):
        return []
    if any(not a.display_name for a in found):
        named = _comment_names(msg, name)
        found = [a if a.display_name or a.addr_spec.lower() not in named
                 else Address(named[a.addr_spec.lower()], a.username, a.domain) for a in found]
    return [_clean_address(a) for a in found]


def _comment_names(msg: Message, name: str) -> dict[str, str]:
    """``{lower-cased addr-spec: name}`` for the addresses of header ``name`` written in the
    comment form ``anna@corp.example (Anna Berg)`` (RFC 5322 §3.4 obsolete syntax that mailing
    lists, cron and older clients still send; ``email.headerregistry`` drops the comment, while
    ``email.utils.getaddresses`` returns it as the name). RFC 2047 words in the comment are
    decoded; a raw value is read up to :data:`MAX_PARSED_HEADER_CHARS` characters."""
    raw = [value[:MAX_PARSED_HEADER_CHARS] for key, value in msg.raw_items()
           if key.lower() == name and "(" in value]
    named: dict[str, str] = {}
    for comment, address in getaddresses(raw) if raw else ():
        if comment.strip() and address:
            try:
                comment = str(make_header(decode_header(comment)))
            except (HeaderParseError, LookupError, UnicodeError):
                pass
            named.setdefault(address.lower(), " ".join(comment.split()))
    return named


def _clean_address(address: Address) -> Address:
    """``address`` with no lone surrogate in its parts (see :func:`_no_surrogates`)."""
    parts = (address.display_name, address.username, address.domain)
    clean = tuple(_no_surrogates(part) for part in parts)
    return address if clean == parts else Address(*clean)


def _collect(part: Message, texts: list[tuple[str, str]], attachments: list[Attachment]) -> None:
    """Append ``(kind, text)`` pairs (kind ``plain`` or ``html``) and attachment descriptions."""
    ctype = part.get_content_type()
    if ctype == "message/rfc822":
        _collect_forwarded(part, texts, attachments)
    elif part.is_multipart() and ctype == "multipart/alternative":
        _collect_alternative(part, texts, attachments)
    elif part.is_multipart():
        for sub in _parts(part):
            _collect(sub, texts, attachments)
    elif _is_attachment(part) or ctype not in ("text/plain", "text/html"):
        attachments.append(_describe(part))
    elif ctype == "text/plain":
        texts.append(("plain", _text(part)))
    else:
        texts.append(("html", html_to_text(_text(part))))


def _collect_alternative(
    part: Message, texts: list[tuple[str, str]], attachments: list[Attachment]
) -> None:
    subparts = _parts(part)
    readable = [p for p in subparts if not _is_attachment(p)]
    for wanted in ("text/plain", "text/html"):
        chosen = [p for p in readable if p.get_content_type() == wanted]
        if chosen:
            _collect(chosen[0], texts, attachments)
            return
    for sub in subparts:
        _collect(sub, texts, attachments)


def _parts(part: Message) -> list[Message]:
    """The sub-parts of a multipart ``part`` (what ``EmailMessage.iter_parts`` yields)."""
    payload = part.get_payload()
    return [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []


def _collect_forwarded(
    part: Message, texts: list[tuple[str, str]], attachments: list[Attachment]
) -> None:
    inner = part.get_payload(0) if part.is_multipart() else None
    if not isinstance(inner, Message):
        attachments.append(_describe(part))
        return
    sender = clip_header(_header(inner, "from") or "unknown sender")[0]
    subject = clip_header(_header(inner, "subject"))[0]
    texts.append(("plain", f"---------- Forwarded message from {sender}: {subject} ----------"))
    _collect(inner, texts, attachments)


def _is_attachment(part: Message) -> bool:
    disposition = (part.get_content_disposition() or "").lower()
    return disposition == "attachment" or (
        disposition == "inline" and part.get_filename() is not None and part.get_content_maintype() != "text"
    )


def _describe(part: Message) -> Attachment:
    try:
        filename = part.get_filename()
    except (ValueError, TypeError):
        filename = None
    payload = part.get_payload(decode=True) if not part.is_multipart() else None
    return Attachment(filename, part.get_content_type(), len(payload) if payload else 0)


def _text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset: object
    if isinstance(part, EmailMessage):
        charset = part.get_content_charset()
    else:
        charset = part.get_param("charset")
    return decode_text(payload, charset if isinstance(charset, str) else None).replace("\r\n", "\n")
