"""What a provider receives, recorded over real HTTP by a loopback stand-in (issue 18, must show).

Secrets generated at test time in the providers' real shapes (an Anthropic key, an OpenAI key, a
GitHub token, an AWS key pair, a signed JWT, a password line and a PEM private key) never arrive,
their typed placeholders do, for an email body, calendar event descriptions and a task note; the
ledger's intent entry counts them and the database holds none of them. Every email in the shared
data goes through email-respond: no address or phone number reaches the provider, the draft goes
to the real recipients, and the model's pseudonyms come back as the real people.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import string
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import icalendar
import jsonschema
import jwt
import phonenumbers
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select
from tests.budgets import ADMIN
from tests.operations.privacy_recorder import prompt_of, recorded_gateway, strings_in
from tests.security.canaries import secret_in, shaped_secrets
from tests.shared_data import SHARED_DATA

from opsgate.operations.io import input_from_file
from opsgate.store.models import ledger_entries

EMAILS = sorted((SHARED_DATA / "emails").glob("*.eml"))
ADDRESS = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
PSEUDONYM = re.compile(r"<person\d+>|<person\d+@example\.invalid>|<phone-\d+>")


def _alnum(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def generated_secrets(pem_key: Any) -> dict[str, tuple[str, str]]:
    """``{name: (line as written in the text, the secret value)}``, fresh for each test."""
    anthropic = "sk-ant-api03-" + secrets.token_urlsafe(70)[:93] + "AA"
    openai = "sk-proj-" + _alnum(48)
    github = "ghp_" + _alnum(36)
    aws_id = "AKIA" + _alnum(16, string.ascii_uppercase + string.digits)
    aws_secret = _alnum(40, string.ascii_letters + string.digits + "/+")
    token = jwt.encode({"sub": "svc-deploy", "exp": datetime.now(UTC) + timedelta(hours=1)},
                       secrets.token_bytes(32), algorithm="HS256")
    password = _alnum(14)
    pem = _pem(pem_key)
    return {
        "anthropic": (f"Claude key for the pilot: {anthropic}", anthropic),
        "openai": (f"The OpenAI one is {openai} (rotate next week)", openai),
        "github": (f"CI uses {github} to push tags", github),
        "aws_id": (f"aws_access_key_id = {aws_id}", aws_id),
        "aws_secret": (f"aws_secret_access_key = {aws_secret}", aws_secret),
        "jwt": (f"Session for the staging API: {token}", token),
        "password": (f"The password is: {password}", password),
        "pem": (f"Deploy key below.\n{pem}", pem),
    }


PLACEHOLDERS = {
    "[API_KEY_1]", "[API_KEY_2]", "[TOKEN_1]", "[AWS_ACCESS_KEY_1]", "[SECRET_1]", "[JWT_1]",
    "[PASSWORD_1]", "[PRIVATE_KEY_1]",
}  # fmt: skip
LEDGERED = {"api_key": 2, "token": 1, "aws_access_key": 1, "secret": 1, "jwt": 1, "password": 1,
            "private_key": 1}  # fmt: skip


def assert_none_arrived(received: str, planted: dict[str, tuple[str, str]]) -> None:
    for name, (_, value) in planted.items():
        fragments = [value, value[-16:]] if name != "pem" else [
            line for line in value.splitlines() if "PRIVATE KEY" not in line]
        leaked = [f for f in fragments if f and f in received]
        assert not leaked, f"{name} reached the provider"


def assert_nothing_stored(gw: Any, planted: dict[str, tuple[str, str]]) -> None:
    """The intent entries count what was masked; no table of the database holds a value."""
    with gw.runtime.engine.connect() as conn:
        bodies = [bytes(b).decode() for (b,) in conn.execute(select(ledger_entries.c.body))]
    database = b"".join(p.read_bytes() for p in Path(gw.settings.database_url[10:]).parent.glob("opsgate.db*"))
    for name, (_, value) in planted.items():
        probe = value.splitlines()[1] if name == "pem" else value
        assert probe.encode() not in database, f"{name} stored in the database"
        assert not any(probe in body for body in bodies)
    counts = [json.loads(b)["privacy"] for b in bodies if '"kind":"intent"' in b]
    assert counts and all(c["masked"] == LEDGERED for c in counts)


def test_secrets_in_an_email_body_never_reach_the_provider(tmp_path: Path) -> None:
    planted = generated_secrets(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "ops@example.com", "dev@example.com", "pilot access"
    msg.set_content("Hi,\n\nhere is everything for the pilot.\n\n"
                    + "\n".join(line for line, _ in planted.values()) + "\n\nThanks")
    with recorded_gateway(tmp_path) as (gw, recorder):
        for op in ("email-classify", "email-respond", "email-compose"):
            recorder.received.clear()
            resp = gw.post(op, {"raw": msg.as_string()})
            assert resp.status_code == 200, resp.text
            received = recorder.texts()
            assert_none_arrived(received, planted)
            assert PLACEHOLDERS <= set(re.findall(r"\[[A-Z_]+_\d\]", received))
            assert resp.json()["privacy"]["masked"] == LEDGERED
        assert_nothing_stored(gw, planted)


def test_internationalised_quoted_literal_and_percent_encoded_addresses_never_reach_the_provider(
    tmp_path: Path,
) -> None:
    """Tester F2's e5.eml: an RFC 6531 address (in a display name's angle brackets too), a quoted
    local part, a domain literal and a percent-encoded address in a URL arrive as pseudonyms."""
    raw = ('From: Jörg Müller <jörg@müller.example>\nTo: "john doe"@corp.example, 用户@例子.广告\n'
           "Cc: admin@[192.168.1.1]\nSubject: access\nContent-Type: text/plain; charset=utf-8\n\n"
           'Write to jörg@müller.example or "john doe"@corp.example or 用户@例子.广告 or '
           "admin@[192.168.1.1]; the invite is https://corp.example/join?email=anna.berg%40corp.example\n")
    with recorded_gateway(tmp_path) as (gw, recorder):
        resp = gw.post("email-respond", {"raw": raw})
        assert resp.status_code == 200, resp.text
        received = recorder.texts()
    leaked = [part for part in ("jörg", "müller", "john doe", "用户", "例子", "192.168.1.1", "anna.berg")
              if part in received.lower()]
    assert leaked == []
    assert "join?email=<person5@example.invalid>" in received
    assert resp.json()["privacy"]["pseudonymised"] == {"email": 5, "name": 1}
    assert resp.json()["output"]["to"] == ["jörg@müller.example"]


def _calendar(descriptions: list[str]) -> str:
    cal = icalendar.Calendar()
    cal.add("prodid", "-//opsgate tests//privacy//EN")
    cal.add("version", "2.0")
    start = datetime(2026, 3, 2, 9, tzinfo=UTC)
    for i, text in enumerate(descriptions):
        event = icalendar.Event()
        event.add("uid", f"privacy-{i}@opsgate.test")
        event.add("summary", f"Deployment step {i}")
        event.add("dtstart", start + timedelta(hours=i))
        event.add("dtend", start + timedelta(hours=i, minutes=30))
        event.add("description", text)
        cal.add_component(event)
    return cal.to_ical().decode()


def test_secrets_in_calendar_descriptions_never_reach_the_provider(tmp_path: Path) -> None:
    planted = generated_secrets(ec.generate_private_key(ec.SECP256R1()))
    ics = _calendar([line for line, _ in planted.values()])
    with recorded_gateway(tmp_path) as (gw, recorder):
        resp = gw.post("calendar-prep", {"ics": ics})
        assert resp.status_code == 200, resp.text
        received = recorder.texts()
        assert "Deployment step 7" in received  # every event (and its description) was sent
        assert_none_arrived(received, planted)
        assert PLACEHOLDERS <= set(re.findall(r"\[[A-Z_]+_\d\]", received))
        assert resp.json()["privacy"]["masked"] == LEDGERED
        assert_nothing_stored(gw, planted)


def test_secrets_in_a_task_note_never_reach_the_provider(tmp_path: Path) -> None:
    planted = generated_secrets(ec.generate_private_key(ec.SECP256R1()))
    note = "Rotate everything the contractor saw:\n" + "\n".join(line for line, _ in planted.values())
    with recorded_gateway(tmp_path) as (gw, recorder):
        resp = gw.post("task-breakdown", {"tasks": [{"title": "Rotate leaked keys", "notes": note}], "task": 0})
        assert resp.status_code == 200, resp.text
        received = recorder.texts()
        assert "Rotate leaked keys" in received
        assert_none_arrived(received, planted)
        assert PLACEHOLDERS <= set(re.findall(r"\[[A-Z_]+_\d\]", received))
        assert resp.json()["privacy"] == {"masked": LEDGERED, "pseudonymised": {},
                                          "unresolved_pseudonyms": []}


def test_secrets_of_every_further_shape_in_instructions_never_reach_the_provider(
    tmp_path: Path,
) -> None:
    """The outside probes' request: values cut at ``& ; } ,`` and the shapes they found arriving
    verbatim (prose passwords, Stripe, GitLab, Hugging Face, npm, SendGrid, Twilio, an AWS secret
    access key in prose, a US SSN; a Redis URL with an empty user, a URL password with ``@``, an
    Azure AccountKey, Slack and Discord webhook URLs, a Slack app-level token), as the Anthropic
    sandbox receives them."""
    planted = shaped_secrets()
    instructions = "\n".join(line for line, _, _ in planted.values())
    with recorded_gateway(tmp_path) as (gw, recorder):
        resp = gw.post("email-compose", {"instructions": instructions, "to": ["bob@example.com"],
                                         "tone": "friendly", "language": "en"})
        assert resp.status_code == 200, resp.text
        [request] = [r for r in recorder.received if r["path"].startswith("/anthropic/")]
        prompt = prompt_of(request["body"])
    for name, (line, secret, placeholder) in planted.items():
        value = secret_in(name, line, secret)
        assert value not in prompt and value[-4:] not in prompt, f"{name} reached the provider"
        assert line.replace(value, placeholder) in prompt, name
    assert resp.json()["privacy"]["masked"] == {
        "password": 6, "token": 7, "api_key": 4, "secret": 2, "ssn": 1, "credential": 2}


def test_a_draft_refers_to_a_masked_secret_by_its_placeholder(tmp_path: Path) -> None:
    planted = generated_secrets(ec.generate_private_key(ec.SECP256R1()))
    body = {"raw": f"From: Ann Lee <ann@example.com>\nTo: me@example.org\nSubject: key\n\n{planted['github'][0]}\n"}
    with recorded_gateway(tmp_path) as (gw, recorder):
        recorder.answer = lambda req: {"language": "en", "open_questions": [],
                                       "body": "Thanks, I revoked [TOKEN_1] already."}
        resp = gw.post("email-respond", body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["output"]["body"] == "Thanks, I revoked [TOKEN_1] already."
    assert resp.json()["output"]["to"] == ["ann@example.com"]


# ---------------------------------------------------------------- pseudonymisation round trips


def header_addresses(path: Path) -> set[str]:
    """Addresses in the message's address headers, read with the standard library alone."""
    import email
    from email import policy

    msg = email.message_from_bytes(path.read_bytes(), policy=policy.compat32)
    fields = [str(v) for h in ("from", "to", "cc", "reply-to", "sender") for v in msg.get_all(h, [])]
    return {addr.lower() for _, addr in getaddresses(fields) if "@" in addr}


def expected_recipients(path: Path) -> list[str]:
    """RFC 5322 §3.6.3: Reply-To, else From (addr-specs, as the standard library reads them)."""
    import email
    from email import policy

    msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    for name in ("reply-to", "from"):
        header = msg.get(name)
        found = [a.addr_spec for a in getattr(header, "addresses", ()) if a.addr_spec not in ("", "<>")]
        if found:
            return found
    return []


def phones_in(text: str, regions: list[str]) -> set[str]:
    found = set()
    for region in regions:
        for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            found.add(phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164))
    return found


def echo_every_pseudonym(body: dict[str, Any]) -> dict[str, Any]:
    """A model that writes back every pseudonym it was given, in order of first appearance."""
    seen = list(dict.fromkeys(PSEUDONYM.findall(prompt_of(body))))
    return {"language": "en", "open_questions": [], "body": "Hello " + ", ".join(seen)}


@pytest.fixture(scope="module")
def respond_gateway(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with recorded_gateway(tmp_path_factory.mktemp("respond")) as pair:
        yield pair


@pytest.mark.parametrize("path", EMAILS, ids=[p.name for p in EMAILS])
def test_email_respond_round_trip_on_every_shared_email(respond_gateway, path: Path) -> None:  # type: ignore[no-untyped-def]
    gw, recorder = respond_gateway
    regions = gw.settings.redaction_phone_regions
    originals = header_addresses(path)
    for answer in (None, echo_every_pseudonym):  # the sandboxes' answer, then one quoting pseudonyms
        recorder.received.clear()
        recorder.answer = answer
        resp = gw.post("email-respond", input_from_file("email-respond", path))
        assert resp.status_code == 200, resp.text
        received = "\n".join(strings_in([r["body"] for r in recorder.received]))
        prompt = "\n".join(prompt_of(r["body"]) for r in recorder.received if "messages" in r["body"])
        addresses = {a.lower() for a in ADDRESS.findall(received)}
        assert all(a.endswith("@example.invalid") for a in addresses), addresses - {
            a for a in addresses if a.endswith("@example.invalid")}
        assert not any(a in received.lower() for a in originals)
        assert not phones_in(received, regions)
        output = resp.json()["output"]
        assert output["to"] == expected_recipients(path)
        if answer is None:
            continue
        given = set(PSEUDONYM.findall(prompt))
        draft = output["body"]
        assert not PSEUDONYM.search(draft)  # every pseudonym handed out came back as a person
        assert resp.json()["privacy"]["unresolved_pseudonyms"] == []
        restored = {a.lower() for a in ADDRESS.findall(draft)}
        assert len(restored) == len({p for p in given if "@" in p})
        assert sent_addresses(path) <= restored


def sent_addresses(path: Path) -> set[str]:
    """The header addresses the email operations put in a prompt: From, the first 20 of To and
    the first 20 of Cc."""
    import email
    from email import policy

    msg = email.message_from_bytes(path.read_bytes(), policy=policy.compat32)
    found = set()
    for header, cap in (("from", 1), ("to", 20), ("cc", 20)):
        pairs = getaddresses([str(v) for v in msg.get_all(header, [])])
        found |= {addr.lower() for _, addr in [p for p in pairs if "@" in p[1]][:cap]}
    return found


def test_invented_and_mangled_pseudonyms_are_kept_and_flagged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    raw = ("From: \"Lee, Ann\" <ann.lee@example.com>\nTo: me@example.org\nSubject: call\n\n"
           "Call me on +44 20 7946 0958 or write to ann.lee@example.com.\nAnn\n")
    with recorded_gateway(tmp_path) as (gw, recorder):
        recorder.answer = lambda req: {"language": "en", "open_questions": [], "body": (
            "Hi <person1>, I will call <phone-1>. Copying <person7@example.invalid> and "
            "<person1@example.com>, ask <phone-9>.")}
        resp = gw.post("email-respond", {"raw": raw})
        prompt = prompt_of(recorder.received[0]["body"])
        spec = gw.client.get("/openapi.json").json()
        database = b"".join(p.read_bytes() for p in tmp_path.glob("opsgate.db*"))
    for original in ("ann.lee@example.com", "Lee, Ann", "Ann Lee", "7946 0958", "me@example.org"):
        assert original.encode() not in database  # the mapping is never ledgered or stored
        assert original not in caplog.text  # nor logged
    assert "opsgate" in caplog.text  # the gateway did log (at DEBUG) through the capture
    assert resp.status_code == 200, resp.text
    documented = spec["paths"]["/v1/operations/email-respond"]["post"]["responses"]["200"]
    jsonschema.validate(resp.json()["privacy"],
                        documented["content"]["application/json"]["schema"]["properties"]["privacy"])
    assert "<person1@example.invalid>" in prompt and "<phone-1>" in prompt
    assert "ann.lee" not in prompt and "7946" not in prompt
    doc = resp.json()
    assert doc["output"]["body"] == (
        "Hi Ann Lee, I will call +44 20 7946 0958. Copying <person7@example.invalid> and "
        "<person1@example.com>, ask <phone-9>.")
    assert doc["privacy"]["unresolved_pseudonyms"] == [
        "<person7@example.invalid>", "<person1@example.com>", "<phone-9>"]
    assert doc["privacy"]["pseudonymised"] == {"email": 2, "name": 1, "phone": 1}


def test_a_meeting_brief_names_the_real_attendees(tmp_path: Path) -> None:
    cal = icalendar.Calendar()
    cal.add("prodid", "-//opsgate tests//privacy//EN")
    cal.add("version", "2.0")
    event = icalendar.Event()
    event.add("uid", "brief@opsgate.test")
    event.add("summary", "Contract review")
    event.add("dtstart", datetime(2026, 3, 2, 9, tzinfo=UTC))
    event.add("dtend", datetime(2026, 3, 2, 10, tzinfo=UTC))
    organizer = icalendar.vCalAddress("mailto:maria.cruz@example.com")
    organizer.params["cn"] = "Maria de la Cruz"
    event.add("organizer", organizer)
    attendee = icalendar.vCalAddress("mailto:j.okafor@example.net")
    attendee.params["cn"] = "Jide Okafor"
    event.add("attendee", attendee)
    event.add("description", "Dial-in +1 415 555 0100; Jide Okafor brings the redlines.")
    cal.add_component(event)
    with recorded_gateway(tmp_path) as (gw, recorder):
        recorder.answer = lambda req: {"summary": "One review with <person1> and <person2>.", "items": [
            {"event": 0, "briefing": "<person2> <person2@example.invalid> brings redlines; dial <phone-1>.",
             "preparation": ["Ask <person1> for the draft"]}]}
        resp = gw.post("calendar-prep", {"ics": cal.to_ical().decode()})
        prompt = prompt_of(recorder.received[0]["body"])
    assert resp.status_code == 200, resp.text
    for original in ("Maria de la Cruz", "maria.cruz@", "Jide Okafor", "j.okafor@", "555 0100"):
        assert original not in prompt
    assert "<person2> brings the redlines" in prompt
    output = resp.json()["output"]
    assert output["summary"] == "One review with Maria de la Cruz and Jide Okafor."
    assert output["items"][0]["briefing"] == (
        "Jide Okafor <j.okafor@example.net> brings redlines; dial +1 415 555 0100.")
    assert output["items"][0]["preparation"] == ["Ask Maria de la Cruz for the draft"]


def test_the_reservation_covers_the_prompt_really_sent(tmp_path: Path) -> None:
    """Placeholders are longer than the short passwords they replace: the budget holds the worst
    case of the minimised prompt, which is dearer than the original's."""
    from opsgate.metering.budgets import set_budget
    from opsgate.metering.models import budget_reservations
    from opsgate.metering.prices import PriceBook
    from opsgate.metering.worstcase import attempt_worst_case_micro_usd
    from opsgate.operations import OPERATIONS
    from opsgate.providers.base import CompletionRequest
    from opsgate.routing.policy import policies_for

    passwords: set[str] = set()
    while len(passwords) < 150:  # distinct: a repeated value would share its placeholder number
        passwords.add(_alnum(3))
    notes = "\n".join(f"door {i} password: {p}" for i, p in enumerate(passwords))
    body = {"tasks": [{"title": "Re-key the doors", "notes": notes}], "task": 0}
    with recorded_gateway(tmp_path) as (gw, recorder):
        set_budget(gw.runtime.ledger, gw.runtime.clock, actor=ADMIN, user_id="*", operation="*", period="day",
                   limit_micro_usd=10**9)
        resp = gw.post("task-breakdown", body)
        assert resp.status_code == 200, resp.text
        with gw.runtime.engine.connect() as conn:
            held = conn.execute(select(budget_reservations.c.worst_micro_usd).where(
                budget_reservations.c.request_id == resp.json()["request_id"])).scalar_one()
    sent = recorder.received[0]["body"]
    assert "[PASSWORD_150]" in prompt_of(sent)
    really_sent = CompletionRequest(
        system=sent["system"], user=prompt_of(sent), max_tokens=sent["max_tokens"],
        json_schema=sent["tools"][0]["input_schema"], schema_name=sent["tools"][0]["name"])
    op = OPERATIONS["task-breakdown"]
    original = op.prepare(op.Input.model_validate(body)).request
    first = policies_for(gw.settings)["task-breakdown"].chain[0]
    model = f"{first.provider}/{first.model}"  # the intent holds the first request at its price
    prices = PriceBook.from_settings(gw.settings, gw.runtime.clock.now)  # the gateway's own price book
    assert held == attempt_worst_case_micro_usd(really_sent, model, prices)
    assert held > attempt_worst_case_micro_usd(original, model, prices)
