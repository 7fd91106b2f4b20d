"""Display names: where a name before ``<address>`` starts (outside tester's F3: "Please email
Anna Berg" was taken for the name), and every name the parser found replaced wherever it occurs
(F2: To/Cc names reached the provider in the Subject and body). Unit cases first, then what the
provider receives over real HTTP (tests/operations/privacy_recorder.py).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import icalendar
import pytest
from tests.operations.privacy_recorder import prompt_of, recorded_gateway

from opsgate.operations.mailparse import parse_email
from opsgate.operations.privacy import PrivacyPolicy
from opsgate.providers.base import CompletionRequest
from opsgate.security.pseudonyms import Pseudonymiser, name_forms, split_name

TESTER_EMAIL = (
    "From: Anna Berg <anna@example.com>\n"
    "To: John Smith <john@example.com>, \"Ærø, Søren\" <soren@firma.dk>\n"
    "Cc: Zoë O'Brien <zoe@example.org>, Dr. Li Wei <liwei@example.cn>\n"
    "Reply-To: Maria de la Cruz <maria@example.es>\n"
    "Subject: hello John Smith\n"
    "Content-Type: text/plain; charset=utf-8\n\n"
    "Hi John Smith, Zoë O'Brien, Li Wei and Søren Ærø,\n"
    "Maria de la Cruz's notes are attached. Anna Berg\n"
)
NAMES = ("Anna Berg", "John Smith", "Søren Ærø", "Ærø, Søren", "Zoë O'Brien", "Li Wei",
         "Maria de la Cruz")  # fmt: skip


@pytest.mark.parametrize(("words", "prose", "name"), [
    ("Please email Anna Berg", "Please email ", "Anna Berg"),
    ("Write to Anna Berg", "Write to ", "Anna Berg"),
    ("Dear Anna Berg", "Dear ", "Anna Berg"),
    ("Please Anna Berg", "Please ", "Anna Berg"),
    ("He is our CFO. Anna Berg", "He is our CFO. ", "Anna Berg"),
    ("ask Ludwig van Beethoven", "ask ", "Ludwig van Beethoven"),
    ("Please email van der Berg", "Please email van der ", "Berg"),
    ("cc Dr. Li Wei", "cc ", "Dr. Li Wei"),
    ("with J. R. Tolkien", "with ", "J. R. Tolkien"),
    ("email Zoë O'Brien", "email ", "Zoë O'Brien"),
    ("an 李伟", "an ", "李伟"),
    ("Anna", "", "Anna"),
    ("write to", "write to", ""),
])  # fmt: skip
def test_a_display_name_is_the_run_of_name_words_before_the_address(words: str, prose: str, name: str) -> None:
    assert split_name(words) == (prose, name)


def test_name_forms_cover_last_first_and_titles_but_never_one_word() -> None:
    assert name_forms("Berg,  Anna") == ["Berg, Anna", "Anna Berg"]
    assert name_forms("Dr. Li Wei") == ["Dr. Li Wei", "Li Wei", "Wei, Li"]
    assert name_forms("Anna Berg") == ["Anna Berg", "Berg, Anna"]
    assert name_forms("Maria de la Cruz") == ["Maria de la Cruz", "de la Cruz, Maria"]
    assert name_forms("Li, Wei (CFO)") == ["Li, Wei (CFO)", "Li, Wei", "Wei Li"]
    assert name_forms("Anna") == []


VARIANTS = (  # tester-priv F3 (e7.eml, e8.eml): how mail writes a name the headers gave as Anna Berg
    "ready.Anna Berg,", "_Anna Berg_", "Anna  Berg", "Anna\tBerg", "Anna\u00a0Berg", "Anna\u2009Berg",
    "Anna\u200bBerg", "Anna\nBerg", "Anna\r\n Berg", "ANNA BERG", "anna berg", "Berg, Anna", "Berg,Anna",
    "x.Anna Berg", "-Anna Berg", "'Anna Berg'", "\uff21\uff4e\uff4e\uff41 \uff22\uff45\uff52\uff47",
    "> Anna\n> Berg wrote:", "Anna Berg\u2019s", "Anna Berg's", "Dr. Anna Berg", "(Anna Berg)",
)
NOT_HER = ("Anna Berg-Schmidt", "Marie-Anna Berg", "AnnaBerg", "Anna_Berg", "Anna.Berg", "Anna Bergs",
           "Hanna Berg", "Anna Berg2", "A. Berg", "Berg Anna", "Anna B.", "Anna Bérg")


@pytest.mark.parametrize("written", VARIANTS)
def test_every_written_variant_of_a_known_name_is_replaced(written: str) -> None:
    p = Pseudonymiser(people=[("Anna Berg", "anna@corp.example")])
    sent = p.pseudonymise(f"Hi,\n{written}\nthanks")
    assert "<person1>" in sent, sent
    assert not re.search(r"(?i)anna|berg|\uff21|\uff22", sent), sent
    assert p.restore("<person1>") == "Anna Berg"


@pytest.mark.parametrize("written", NOT_HER)
def test_a_longer_or_other_word_is_not_taken_for_the_name(written: str) -> None:
    p = Pseudonymiser(people=[("Anna Berg", "anna@corp.example")])
    assert p.pseudonymise(f"Hi {written} here") == f"Hi {written} here"


def test_a_decomposed_body_and_punctuated_mentions_of_a_header_name_are_replaced() -> None:
    """tester-priv F3 e8.eml: macOS Mail writes the body in NFD; the span replaced is the one
    written, so the characters around it are kept exactly."""
    import unicodedata

    body = unicodedata.normalize("NFD", "Regards from Jörg Müller, and 'Jörg Müller' quoted\n-Jörg Müller\n"
                                        "please ask Jörg\nMüller; MÜLLER, JÖRG agrees. Zoë")
    p = Pseudonymiser(people=[("Jörg Müller", "j@corp.example")])
    assert p.pseudonymise(body) == unicodedata.normalize("NFD", (
        "Regards from <person1>, and '<person1>' quoted\n-<person1>\n"
        "please ask <person1>; <person1> agrees. Zoë"))


def test_a_name_met_beside_its_address_is_also_replaced_surname_first() -> None:
    p = Pseudonymiser()
    sent = p.pseudonymise("Anna Berg <anna@example.com> wrote: Berg, Anna and ANNA BERG agree")
    assert sent == "<person1> <person1@example.invalid> wrote: <person1> and <person1> agree"


def test_the_testers_instruction_keeps_its_words_and_every_mention_is_replaced() -> None:
    p = Pseudonymiser()
    text = "Please email Anna Berg <anna@example.com>. Anna Berg is the CFO; Anna Berg's deck is due."
    assert p.pseudonymise(text) == (
        "Please email <person1> <person1@example.invalid>. <person1> is the CFO; <person1>'s deck is due.")
    assert p.restore({"body": "Dear <person1>, see <person1@example.invalid>"}) == {
        "body": "Dear Anna Berg, see anna@example.com"}
    assert p.counts == {"email": 1, "name": 1, "phone": 0}


def test_a_quoted_last_first_name_is_replaced_in_its_other_order() -> None:
    p = Pseudonymiser()
    sent = p.pseudonymise('"Berg, Anna" <anna@example.com> wrote: ask Anna Berg, not Berg, Anna.')
    assert sent == "<person1> <person1@example.invalid> wrote: ask <person1>, not <person1>."


def test_the_parser_finds_every_named_header_address() -> None:
    assert parse_email(TESTER_EMAIL).people == [
        ("Anna Berg", "anna@example.com"), ("Maria de la Cruz", "maria@example.es"),
        ("John Smith", "john@example.com"), ("Ærø, Søren", "soren@firma.dk"),
        ("Zoë O'Brien", "zoe@example.org"), ("Dr. Li Wei", "liwei@example.cn"),
    ]  # fmt: skip


def test_a_known_name_in_the_system_prompt_is_never_sent_from_the_cache() -> None:
    policy = PrivacyPolicy.of(["email-respond"], ["US"])
    request = CompletionRequest(system="Write as John Smith would.", user="hi", max_tokens=10)
    policy.minimise("email-respond", request)  # no people: remembered as having nothing to do
    sent, _ = policy.minimise("email-respond", request, [("John Smith", "john@example.com")])
    assert sent.system == "Write as <person1> would."
    shouted = CompletionRequest(system="Write as JOHN\u00a0SMITH would.", user="hi", max_tokens=10)
    policy.minimise("email-respond", shouted)
    sent, _ = policy.minimise("email-respond", shouted, [("John Smith", "john@example.com")])
    assert sent.system == "Write as <person1> would."


def test_every_header_name_is_pseudonymised_in_subject_and_body(tmp_path: Path) -> None:
    """The tester's F2 repro over HTTP: the names of From, To, Cc and Reply-To reach the provider
    nowhere, in whatever form the body writes them."""
    with recorded_gateway(tmp_path) as (gw, recorder):
        resp = gw.post("email-classify", {"raw": TESTER_EMAIL})
        assert resp.status_code == 200, resp.text
        [request] = [r for r in recorder.received if r["path"].startswith("/anthropic/")]
        prompt = prompt_of(request["body"])
    received = recorder.texts()
    assert [n for n in NAMES if n in received] == []
    assert "Subject: hello <person2>" in prompt
    assert "Hi <person2>, <person4>, <person5> and <person3>,\n<person6>'s notes are attached. <person1>" in prompt
    assert resp.json()["privacy"]["pseudonymised"] == {"email": 5, "name": 6}


def test_the_testers_compose_instruction_is_sent_whole_and_restored_right(tmp_path: Path) -> None:
    """The tester's F3 repro over HTTP: the user's words arrive, the name does not, and the draft
    names Anna Berg."""
    with recorded_gateway(tmp_path) as (gw, recorder):
        recorder.answer = lambda req: {"subject": "x", "body": "Dear <person1>", "language": "en",
                                       "open_questions": []}
        resp = gw.post("email-compose", {
            "instructions": "Please email Anna Berg <anna@example.com>. Anna Berg is the CFO.", "tone": "friendly"})
        assert resp.status_code == 200, resp.text
        [request] = [r for r in recorder.received if r["path"].startswith("/anthropic/")]
        prompt = prompt_of(request["body"])
    assert "Please email <person1> <person1@example.invalid>. <person1> is the CFO." in prompt
    assert "Anna Berg" not in recorder.texts() and "anna@" not in recorder.texts()
    assert resp.json()["output"]["body"] == "Dear Anna Berg"


def test_calendar_attendees_are_pseudonymised_in_descriptions(tmp_path: Path) -> None:
    """An attendee beyond the ten listed, an organizer whose CN is ``Last, First`` and one with a
    remark in brackets (the tester's F6) are named in the event's title and description: no part
    of their names reaches the provider, and the brief names them again."""
    cal = icalendar.Calendar()
    cal.add("prodid", "-//opsgate tests//names//EN")
    cal.add("version", "2.0")
    event = icalendar.Event()
    event.add("uid", "names-1@opsgate.test")
    event.add("summary", "Board prep with Björn Ångström")
    event.add("dtstart", datetime(2026, 3, 2, 9, tzinfo=UTC))
    event.add("dtend", datetime(2026, 3, 2, 9, 30, tzinfo=UTC))
    event.add("description", "Anna Berg presents; Tomás Ortega de la Vega reviews the numbers. "
                             "Björn Ångström and Wei Li join.")
    people = [("Berg, Anna", "lead@example.com"), ("Ångström, Björn", "Bjorn.Angstrom@Example.SE"),
              ("Li, Wei (CFO)", "li.wei@example.cn"),
              *((f"Member Number{i}", f"m{i}@example.com") for i in range(8)),
              ("Tomás Ortega de la Vega", "tomas@example.es")]
    for i, (name, address) in enumerate(people):
        who = icalendar.vCalAddress(f"mailto:{address}")
        who.params["cn"] = name
        event.add("organizer" if i == 0 else "attendee", who)
    cal.add_component(event)
    with recorded_gateway(tmp_path) as (gw, recorder):
        recorder.answer = lambda req: {"summary": "", "items": []}
        gw.post("calendar-prep", {"ics": cal.to_ical().decode()})
        prompt = prompt_of(recorder.received[0]["body"])
        anna, tomas = (re.search(rf"<person(\d+)> {verb}", prompt) for verb in ("presents", "reviews"))
        assert anna and tomas, prompt
        recorder.answer = lambda req: {"summary": f"<person{anna[1]}> and <person{tomas[1]}> meet.", "items": []}
        resp = gw.post("calendar-prep", {"ics": cal.to_ical().decode()})
        assert resp.status_code == 200, resp.text
    received = recorder.texts()
    names = ("Anna", "Berg", "Tomás", "Ortega", "Member", "Björn", "Ångström", "Wei", "CFO")
    assert [n for n in names if n in received] == []
    assert "Board prep with <person" in received
    assert resp.json()["output"]["summary"] == "Anna Berg and Tomás Ortega de la Vega meet."


COMMENT_FORM = (  # tester-priv F12 (e10.eml): RFC 5322 comment-form names beside name-addrs
    "From: anna.berg@corp.example (Anna Berg)\n"
    "To: karl@corp.example (Karl Weiss), \"Weiss, Karla\" <karla@corp.example>, bo@corp.example\n"
    "Cc: joerg@corp.example (=?utf-8?q?J=C3=B6rg_M=C3=BCller?=)\n"
    "Subject: hello Karl Weiss\n"
    "Content-Type: text/plain; charset=utf-8\n\n"
    "Hi Karl Weiss, Karla Weiss and Jörg Müller, Lena here. Cheers, Anna Berg\n"
)


def test_a_comment_form_name_is_a_display_name() -> None:
    mail = parse_email(COMMENT_FORM)
    assert (mail.sender, mail.sender_name) == ("anna.berg@corp.example", "Anna Berg")
    assert mail.people == [
        ("Anna Berg", "anna.berg@corp.example"), ("Karl Weiss", "karl@corp.example"),
        ("Weiss, Karla", "karla@corp.example"), ("Jörg Müller", "joerg@corp.example"),
    ]  # fmt: skip


def test_comment_form_names_never_reach_the_provider() -> None:
    from opsgate.operations import OPERATIONS

    op = OPERATIONS["email-respond"]
    prepared = op.prepare(op.Input.model_validate({"raw": COMMENT_FORM}))
    sent, _ = PrivacyPolicy().minimise("email-respond", prepared.request, prepared.people)
    text = sent.system + sent.user
    assert [n for n in ("Anna", "Berg", "Karl", "Weiss", "Jörg", "Müller") if n in text] == []
    assert "Hi <person2>, <person3> and <person5>, Lena here. Cheers, <person1>" in text
