"""MIME parsing on the real messages in shared/data/emails and on hand-made nasty cases."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest

from opsgate.errors import InvalidInput
from opsgate.operations import OPERATIONS
from opsgate.operations.base import prepare_input
from opsgate.operations.mailparse import decode_text, html_to_text, parse_email, split_quoted
from tests.shared_data import SHARED_DATA

DATA = SHARED_DATA
EMAILS = sorted((DATA / "emails").glob("*.eml"))


def read(name: str) -> str:
    return (DATA / "emails" / name).read_text(encoding="utf-8")


def test_the_real_messages_are_all_there() -> None:
    assert len(EMAILS) == 24


@pytest.mark.parametrize("path", EMAILS, ids=lambda p: p.name)
@pytest.mark.parametrize("op_id", ["email-classify", "email-respond", "email-compose"])
def test_every_real_message_prepares(path: Path, op_id: str) -> None:
    op = OPERATIONS[op_id]
    prepared = op.prepare(op.Input.model_validate({"raw": path.read_text(encoding="utf-8")}))
    assert '<data name="email">' in prepared.request.user
    assert prepared.request.json_schema == op.answer_model(prepared).model_json_schema()


def test_quoted_printable_and_base64_parts_are_decoded() -> None:
    mail = parse_email(read("008.eml"))
    assert "¡This is a Quoted Printable encoded message!" in mail.new_text
    assert mail.new_text.count("This is a Base64 encoded message.") == 2


def test_attachments_are_described_never_included() -> None:
    mail = parse_email(read("006.eml"))
    assert [(a.filename, a.content_type) for a in mail.attachments] == [("dingusfish.gif", "image/gif")]
    assert mail.attachments[0].size_bytes > 3000
    prepared = OPERATIONS["email-classify"].prepare(OPERATIONS["email-classify"].Input.model_validate({"raw": read("006.eml")}))
    assert "dingusfish.gif (image/gif)" in prepared.request.user
    assert "R0lGODdh" not in prepared.request.user  # the GIF's base64 never reaches a provider


def test_rfc2047_subject_and_utf8_qp_body() -> None:
    mail = parse_email(read("022.eml"))
    assert mail.subject == "Simple text. How are you? Как ты поживаешь?"
    assert "А эта линия по-русски." in mail.new_text


def test_forwarded_message_is_read() -> None:
    mail = parse_email(read("005.eml"))
    assert mail.new_text.startswith("---------- Forwarded message from sam.lee@example.org: testing")


def test_missing_header_separator_keeps_headers() -> None:
    mail = parse_email(read("018.eml"))
    assert mail.subject == "here's something interesting"
    assert mail.sender == "aperson@example.com"


def test_headerless_mime_with_tricky_boundaries_parses() -> None:
    mail = parse_email(read("020.eml"))
    assert mail.sender is None
    assert "puts them at the start of a line" in mail.new_text


def test_html_only_message_becomes_text() -> None:
    raw = (
        "From: shop@example.com\nTo: a@example.org\nSubject: Offer\nMIME-Version: 1.0\n"
        'Content-Type: text/html; charset="utf-8"\n\n'
        "<html><head><style>p{color:red}</style><script>alert(1)</script></head>"
        "<body><p>Save&nbsp;20&#37; <b>today</b></p><p>Line&lt;two&gt;</p></body></html>\n"
    )
    mail = parse_email(raw)
    assert mail.html_only is True
    assert mail.new_text == "Save 20% today\n\nLine<two>"


def test_html_to_text_keeps_line_breaks() -> None:
    assert html_to_text("<div>a<br>b</div><p>c <i>d</i></p>") == "a\nb\n\nc d"


def test_mislabelled_utf8_is_read_as_utf8() -> None:
    assert decode_text("Grüße".encode(), "iso-8859-1") == "Grüße"
    assert decode_text("Grüße".encode(), None) == "Grüße"


def test_true_latin1_and_koi8_are_honoured() -> None:
    assert decode_text("Grüße".encode("latin-1"), "iso-8859-1") == "Grüße"
    assert decode_text("Привет".encode("koi8-r"), "koi8-r") == "Привет"


def test_wrong_and_unknown_charsets_fall_back() -> None:
    assert decode_text("Grüße".encode("latin-1"), "utf-8") == "Grüße"
    assert decode_text("héllo".encode(), "x-no-such-charset") == "héllo"
    assert decode_text(b"\x81\x8d\x8f", "x-no-such-charset") == "\ufffd\ufffd\ufffd"


def test_base64_body_with_non_utf8_charset() -> None:
    body = base64.b64encode("Ça coûte 10 €".encode("cp1252")).decode()
    raw = (
        "From: a@example.com\nSubject: =?iso-8859-1?q?R=E9sum=E9?=\nMIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=windows-1252\nContent-Transfer-Encoding: base64\n\n"
        f"{body}\n"
    )
    mail = parse_email(raw)
    assert mail.subject == "Résumé"
    assert mail.new_text == "Ça coûte 10 €"


def test_quoted_reply_chain_is_separated() -> None:
    text = (
        "Sounds good, see you then.\n\nOn Tue, 3 Mar 2026 at 10:00, Bo <bo@example.com> wrote:\n"
        "> Shall we meet at 3?\n>> Earlier mail\n"
    )
    new, old = split_quoted(text)
    assert new == "Sounds good, see you then."
    assert old.startswith("On Tue, 3 Mar 2026") and old.endswith(">> Earlier mail")


def test_outlook_original_message_block_is_history() -> None:
    text = "Yes.\n\n-----Original Message-----\nFrom: Bo\nSent: Monday\nTo: Al\nSubject: Q\n\nQuestion?"
    assert split_quoted(text) == ("Yes.", "-----Original Message-----\nFrom: Bo\nSent: Monday\nTo: Al\nSubject: Q\n\nQuestion?")


def test_interleaved_answers_stay_new() -> None:
    new, old = split_quoted("> q1\na1\n> q2\na2")
    assert new == "a1\na2" and old == "> q1\n> q2"


def test_long_history_is_trimmed_oldest_first_and_reported() -> None:
    history = "\n".join(f"> line {i:05d}" for i in range(2000))
    raw = f"From: a@example.com\nSubject: long\n\nNew text here.\n\nOn Mon, Bo wrote:\n{history}\n"
    op = OPERATIONS["email-classify"]
    prepared = op.prepare(op.Input.model_validate({"raw": raw}))
    info = prepared.context["email"]
    assert info.trimmed is True
    assert any("quoted history" in note for note in info.trim_notes)
    assert "> line 00000" in prepared.request.user  # newest kept
    assert "> line 01999" not in prepared.request.user  # oldest dropped


def test_not_an_email_is_rejected_without_echo() -> None:
    secret = "sk-ant-api03-" + "x" * 40
    op = OPERATIONS["email-classify"]
    with pytest.raises(InvalidInput) as caught:
        op.prepare(op.Input.model_validate({"raw": f"just some text {secret}\nand more"}))
    assert "not an RFC 822 message" in caught.value.detail
    assert caught.value.errors == [{"loc": "raw", "msg": caught.value.detail}]
    assert secret not in str(caught.value) + repr(caught.value.errors)


def test_structured_email_fields_work() -> None:
    op = OPERATIONS["email-respond"]
    body = {
        "email": {"subject": "Hi", "sender": "bo@example.com", "to": ["me@example.com", "x@example.com"],
                  "body": "Can you come?\n\n> old", "message_id": "<m1@example.com>"},
        "reply_all": True, "me": ["me@example.com"],
    }
    prepared = op.prepare(op.Input.model_validate(body))
    assert prepared.context["to"] == ["bo@example.com"]
    assert prepared.context["cc"] == ["x@example.com"]
    assert prepared.context["subject"] == "Re: Hi"
    assert prepared.context["references"] == ["<m1@example.com>"]


def _no_surrogate(parsed) -> bool:
    texts = [parsed.subject, parsed.sender or "", parsed.sender_name or "", parsed.new_text, parsed.quoted_text,
             *parsed.to, *parsed.cc, *(a.filename or "" for a in parsed.attachments)]
    return not any(0xD800 <= ord(ch) <= 0xDFFF for text in texts for ch in text)


def test_raw_utf8_and_latin1_header_bytes_are_decoded_never_left_as_surrogates() -> None:
    """RFC 6532 raw UTF-8 headers, and raw Latin-1 bytes (here as the ``surrogateescape`` code
    points a non-UTF-8 file read that way carries), give real characters: the stdlib kept them as
    lone surrogates, which the first strict UTF-8 encode downstream turned into a 500."""
    utf8 = parse_email('From: "José Müller" <jose@example.com>\nTo: Zoë Öz <zoe@example.com>\n'
                       "Cc: Anna-Lena Öz <al@example.com>\nSubject: Grüße\n\nHallo\n")
    assert (utf8.sender_name, utf8.sender, utf8.subject) == ("José Müller", "jose@example.com", "Grüße")
    assert utf8.to == ["zoe@example.com"] and utf8.cc == ["al@example.com"]
    latin1 = parse_email("From: Jos\udce9 M\udcfcller <jose@example.com>\nSubject: Gr\udcfc\udcdfe\n\nHallo\n")
    assert (latin1.sender_name, latin1.subject) == ("José Müller", "Grüße")
    assert _no_surrogate(utf8) and _no_surrogate(latin1)


def test_header_bytes_off_their_charset_and_stray_surrogates_become_replacements() -> None:
    # an RFC 2047 word whose bytes are not UTF-8 (the stdlib keeps them as surrogates; decoded like
    # a raw header), a
    # surrogate that stands for no byte, an 8-bit attachment name and a forwarded 8-bit From
    raw = ("From: =?utf-8?q?Jos=E9?= <a@example.com>\nSubject: x \ud800 y\nContent-Type: multipart/mixed; boundary=B\n\n"
           "--B\nContent-Type: text/plain\n\nbody \ud800\n"
           '--B\nContent-Type: application/pdf\nContent-Disposition: attachment; filename="r\udce9sum\udce9.pdf"\n\nxx\n'
           "--B\nContent-Type: message/rfc822\n\nFrom: Bj\udcf6rn <b@example.com>\nSubject: old\n\ninner\n--B--\n")
    parsed = parse_email(raw)
    assert parsed.sender_name == "José" and parsed.subject == "x \ufffd y"  # E9 read as Windows-1252
    assert [a.filename for a in parsed.attachments] == ["résumé.pdf"]
    assert "Forwarded message from Björn <b@example.com>: old" in parsed.new_text and "body \ufffd" in parsed.new_text
    assert _no_surrogate(parsed)


def _nested_multipart(depth: int) -> str:
    opening = "".join(f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n' for i in range(depth))
    closing = "".join(f"--b{i}--\r\n" for i in reversed(range(depth)))
    return f"From: a@example.com\r\nSubject: s\r\nMIME-Version: 1.0\r\n{opening}" \
           f"Content-Type: text/plain\r\n\r\nhello\r\n{closing}"


@pytest.mark.parametrize("raw", [
    _nested_multipart(1500),
    "From: a@example.com " + "(" * 1000 + ")" * 1000 + "\r\nSubject: s\r\n\r\nhi\r\n",
], ids=["multipart-1500-deep", "from-comments-1000-deep"])
def test_nesting_past_the_stack_is_one_clean_422_with_no_traceback_logged(raw: str, caplog) -> None:
    """Tester A: 1,500 nested multipart/mixed parts gave a 422 only through prepare_input's
    catch-all, which logs the RecursionError's traceback as an unanticipated failure."""
    op = OPERATIONS["email-classify"]
    with pytest.raises(InvalidInput) as caught:
        prepare_input(op, op.Input.model_validate({"raw": raw}))
    assert "nests MIME parts, forwarded messages or header comments too deeply" in caught.value.detail
    assert caught.value.errors == [{"loc": "raw", "msg": caught.value.detail}]
    assert [r for r in caplog.records if r.exc_info] == []
    assert parse_email(_nested_multipart(50)).new_text == "hello"


def _lines_run(depth: int) -> int:
    """The Python lines executed to convert ``depth`` nested ``<div>`` to text (a measure of work)."""
    html = "<div>\n" * depth + "hi" + "</div>" * depth
    count = 0

    def line(frame, event, arg):  # type: ignore[no-untyped-def]
        nonlocal count
        count += 1
        return line

    previous = sys.gettrace()  # coverage's tracer under ./dev test: it must be put back
    sys.settrace(lambda frame, event, arg: line)
    try:
        assert html_to_text(html) == "hi"
    finally:
        sys.settrace(previous)
    return count


def test_html_to_text_work_grows_linearly_with_nesting() -> None:
    """BeautifulSoup's tree took time quadratic in the nesting depth (20,000 nested <div>, 220 KB
    of an email's HTML part: 52 s): twice the depth ran 2.74 times the lines; now 2.0."""
    assert _lines_run(1000) < 2.1 * _lines_run(500)
    assert html_to_text("<div>" * 20_000 + "hi<br>there" + "</div>" * 20_000) == "hi\nthere"
