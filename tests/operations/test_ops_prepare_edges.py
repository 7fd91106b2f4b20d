"""What an operation's ``prepare`` does with hostile or broken input (issue 14, item 5): every
header value put into a prompt is clipped at MAX_HEADER_CHARS, a header is parsed only up to
MAX_PARSED_HEADER_CHARS, and any failure of ``prepare`` is a 422 naming the field."""

from __future__ import annotations

import logging

import pytest
from pydantic import BaseModel

from opsgate.errors import InvalidInput, NotFound
from opsgate.operations import get_operation
from opsgate.operations.base import Operation, Prepared, prepare_input
from opsgate.operations.mailparse import MAX_HEADER_CHARS, MAX_PARSED_HEADER_CHARS, clip_header, parse_email


def _prompt(data: dict) -> tuple[str, list[str]]:
    op = get_operation("email-classify")
    prepared = prepare_input(op, op.Input.model_validate(data))
    return prepared.request.user, prepared.context["email"].trim_notes


def _line(prompt: str, header: str) -> str:
    return next(line for line in prompt.splitlines() if line.startswith(f"{header}: "))


def test_clip_header_keeps_short_values_and_marks_cut_ones() -> None:
    assert clip_header("a@example.com") == ("a@example.com", False)
    assert clip_header("x" * MAX_HEADER_CHARS) == ("x" * MAX_HEADER_CHARS, False)
    cut, was_cut = clip_header("x" * 600_000)
    assert was_cut and len(cut) == MAX_HEADER_CHARS == 255 and cut.endswith("[...]") and "\n" not in cut


def test_every_header_value_in_the_prompt_is_clipped() -> None:
    long_address = "a" * 400 + "@example.com"
    prompt, notes = _prompt({"email": {
        "sender": "maria@example.com", "to": [long_address, "b@example.com"], "cc": [long_address],
        "date": "Tue, 03 Mar 2026 " + "9" * 80, "subject": "Refund", "body": "Please refund."}})
    assert _line(prompt, "To") == f"To: {'a' * 250}[...], b@example.com"
    assert _line(prompt, "Cc") == f"Cc: {'a' * 250}[...]"
    assert _line(prompt, "Date") == "Date: Tue, 03 Mar 2026 " + "9" * 80  # 97 characters: whole
    assert notes == ["header values cut to 255 characters: To, Cc"]


def test_a_long_raw_date_is_clipped() -> None:
    raw = f"From: a@example.com\r\nDate: {'7' * 2_000}\r\nSubject: s\r\n\r\nhi\r\n"
    prompt, notes = _prompt({"raw": raw})
    assert _line(prompt, "Date") == f"Date: {'7' * 250}[...]"
    assert notes == ["header values cut to 255 characters: Date"]


def test_a_600000_character_from_is_clipped_and_parsed_only_in_part() -> None:
    raw = ('From: "' + "Maria " * 100_000 + '" <maria@example.com>\r\nTo: support@example.org\r\n'
           "Subject: Refund\r\n\r\nPlease refund.\r\n")
    mail = parse_email(raw)  # the value's tail beyond MAX_PARSED_HEADER_CHARS is never parsed
    assert mail.sender is not None and len(mail.sender) == MAX_PARSED_HEADER_CHARS + 1  # the parser closes the cut quote
    prompt, notes = _prompt({"raw": raw})
    assert len(_line(prompt, "From")) <= len("From: ") + MAX_HEADER_CHARS
    assert notes == ["header values cut to 255 characters: From"]
    assert len(prompt) < 1_000


def test_a_forwarded_messages_headers_are_clipped() -> None:
    raw = ("From: a@example.com\r\nSubject: Fwd\r\nMIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n"
           f"From: {'f' * 1_000}@example.com\r\nSubject: {'s' * 1_000}\r\n\r\nforwarded text\r\n")
    mail = parse_email(raw)
    banner = next(line for line in mail.new_text.splitlines() if "Forwarded message" in line)
    assert f"{'f' * 250}[...]" in banner and f"{'s' * 250}[...]" in banner and len(banner) < 600


class _Broken(Operation):
    id = "broken"
    reads = ("text",)

    class Input(BaseModel):
        text: str | None = None
        other: int = 0

    def __init__(self, error: Exception) -> None:
        self.error = error

    def prepare(self, data: BaseModel, prompt: object = None) -> Prepared:
        raise self.error


def test_an_unanticipated_failure_in_prepare_is_a_422_naming_the_read_field(caplog) -> None:
    op = _Broken(KeyError("secret-looking-value"))
    with pytest.raises(InvalidInput) as info:
        prepare_input(op, op.Input(text="some input"))
    assert info.value.errors == [{"loc": "text", "msg": "could not be read (KeyError)"}]
    assert info.value.detail == "The text field could not be prepared for the model: could not be read (KeyError)"
    assert "secret-looking-value" not in info.value.detail
    [record] = [r for r in caplog.records if r.name == "opsgate.operations"]
    assert record.levelno == logging.WARNING and "broken: preparing the input failed (KeyError)" in record.getMessage()


def test_without_a_read_field_given_the_body_is_named() -> None:
    op = _Broken(ValueError("x"))
    with pytest.raises(InvalidInput) as info:
        prepare_input(op, op.Input(other=3))
    assert info.value.errors == [{"loc": "body", "msg": "could not be read (ValueError)"}]


@pytest.mark.parametrize("error", [InvalidInput("named", errors=[{"loc": "text", "msg": "bad"}]), NotFound("x")])
def test_opsgate_errors_from_prepare_pass_as_raised(error) -> None:
    with pytest.raises(type(error)) as info:
        prepare_input(_Broken(error), _Broken.Input(text="t"))
    assert info.value is error


def test_a_raw_attachment_name_over_255_characters_is_a_422_on_raw() -> None:
    raw = ("From: a@example.com\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           "--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/pdf\r\n"
           f'Content-Disposition: attachment; filename="{"n" * 300}.pdf"\r\n\r\nxx\r\n--b--\r\n')
    op = get_operation("email-respond")
    with pytest.raises(InvalidInput) as info:
        prepare_input(op, op.Input.model_validate({"raw": raw}))
    assert info.value.errors == [{"loc": "raw", "msg": "filename: String should have at most 255 characters"}]
