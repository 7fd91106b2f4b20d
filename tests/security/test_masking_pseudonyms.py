"""Secret placeholders and per-call pseudonyms, unit by unit (opsgate.security.masking and
opsgate.security.pseudonyms); the end-to-end proof is tests/operations/test_privacy_prompts.py."""

from __future__ import annotations

import secrets
import string

from tests.security.canaries import secret_in, shaped_secrets

from opsgate.operations.privacy import PrivacyPolicy
from opsgate.providers.base import CompletionRequest
from opsgate.security.masking import SecretMasker
from opsgate.security.pseudonyms import Pseudonymiser
from opsgate.security.sanitizer import hold_secret, sanitize


def _key() -> str:
    return "sk-ant-api03-" + "".join(secrets.choice(string.ascii_letters) for _ in range(40))


def test_the_same_secret_gets_the_same_placeholder_and_counts_once() -> None:
    key, other = _key(), _key()
    masker = SecretMasker()
    text = f"use {key}\nnot {other}\nagain {key}\npassword: {other[-12:]}"
    assert masker.mask(text) == "use [API_KEY_1]\nnot [API_KEY_2]\nagain [API_KEY_1]\npassword: [PASSWORD_1]"
    assert masker.counts == {"API_KEY": 2, "PASSWORD": 1}
    assert "sk-ant" not in repr(masker)


def test_masking_is_idempotent_and_the_log_sanitizer_leaves_placeholders_alone() -> None:
    masker = SecretMasker()
    once = masker.mask(f"The password is: {secrets.token_hex(8)}\nAuthorization: Bearer {secrets.token_hex(16)}")
    assert once == "The password is: [PASSWORD_1]\nAuthorization: [CREDENTIAL_1]"
    assert masker.mask(once) == once
    assert sanitize(once) == once


def test_connection_strings_cards_and_field_names_get_their_kinds() -> None:
    masker = SecretMasker()
    text = (
        f"postgresql://app:{secrets.token_hex(6)}@db.internal:5432/app\n"
        f"Server=db;User Id=sa;Password={secrets.token_hex(6)};\n"
        "card 4111 1111 1111 1111\n"
        f"aws_access_key_id = AKIA{secrets.token_hex(8).upper()}\n"
        f"client_secret: {secrets.token_hex(10)}\n"
    )
    assert masker.mask(text) == (
        "postgresql://[CREDENTIAL_1]@db.internal:5432/app\nServer=db;User Id=sa;Password=[PASSWORD_1];\n"
        "card [CARD_NUMBER_1]\naws_access_key_id = [AWS_ACCESS_KEY_1]\nclient_secret: [SECRET_1]\n"
    )


def test_every_secret_the_process_holds_is_masked_literally_whatever_its_shape() -> None:
    odd = f"correct horse {secrets.token_hex(6)} battery"  # no known key shape, has spaces
    text = f"the vault phrase is {odd}, keep it\nagain: {odd}"
    assert SecretMasker().mask(text) == text  # not held: nothing says it is a secret
    hold_secret(odd)  # as the settings and the secret store do at start-up
    masker = SecretMasker()
    assert masker.mask(text) == "the vault phrase is [SECRET_1], keep it\nagain: [SECRET_1]"
    assert masker.counts == {"SECRET": 1}
    assert odd not in repr(masker)


def test_addresses_and_phones_are_left_to_the_pseudonymiser() -> None:
    text = "write to ann@example.com or call +44 20 7946 0958"
    masker = SecretMasker()
    assert masker.mask(text) == text
    assert masker.counts == {}


def test_pseudonyms_are_stable_per_call_and_restore_exactly() -> None:
    p = Pseudonymiser(["GB"])
    text = ('From: "Lee, Ann" <Ann.Lee@example.com>\nCc: bo@example.org\n'
            "Ann.Lee@EXAMPLE.com wrote: ring 020 7946 0958 or +44 20 7946 0958. Lee, Ann")
    sent = p.pseudonymise(text)
    assert sent == (
        "From: <person1> <person1@example.invalid>\nCc: <person2@example.invalid>\n"
        "<person1@example.invalid> wrote: ring <phone-1> or <phone-1>. <person1>"
    )
    assert p.counts == {"email": 2, "name": 1, "phone": 1}
    answer = {"body": "Dear <person1>, <person2@example.invalid> and <person1> <person1@example.invalid> "
                      "will call <phone-1>.", "n": 3, "list": ["person2@example.invalid"]}
    assert p.restore(answer) == {
        "body": "Dear Ann Lee, bo@example.org and Ann Lee <Ann.Lee@example.com> will call 020 7946 0958.",
        "n": 3, "list": ["bo@example.org"]}
    assert p.unresolved == []
    assert "example.com" not in repr(p) and "7946" not in repr(p)


def test_pseudonym_shaped_input_keeps_its_number_and_is_never_restored() -> None:
    """tester-priv F7: the sender typed ``<phone-1>`` and ``<person1>``; the call's own
    pseudonyms skip those numbers, so the model can tell them apart and the answer's literal
    text is not "restored" as a real number or name (nor flagged as invented)."""
    p = Pseudonymiser(["GB"])
    sent = p.pseudonymise("typed: <phone-1>, <person1>, person3@example.invalid. "
                          "Call +44 20 7946 0958, Bo <bo@example.org>, Cy <cy@example.org>")
    assert sent == ("typed: <phone-1>, <person1>, <person2@example.invalid>. "
                    "Call <phone-2>, <person4> <person4@example.invalid>, <person5> <person5@example.invalid>")
    answer = "<phone-1> is not <phone-2>; <person1> is not <person4>; <person3> is not <person5>"
    assert p.restore(answer) == "<phone-1> is not +44 20 7946 0958; <person1> is not Bo; <person3> is not Cy"
    assert p.restore("<person2@example.invalid>") == "person3@example.invalid"
    assert p.unresolved == ["<person3>"]


def test_the_policy_reserves_the_user_texts_pseudonym_shapes_before_the_system_hands_any_out() -> None:
    policy = PrivacyPolicy.of(["email-respond"], ["US"])
    request = CompletionRequest(system="Sign as: Ann Lee <ann@example.org>.",
                                user="She wrote <person1> in her mail", max_tokens=10)
    sent, privacy = policy.minimise("email-respond", request)
    assert (sent.system, sent.user) == ("Sign as: <person2> <person2@example.invalid>.", request.user)
    assert privacy.restore({"body": "<person1> and <person2>"}) == {"body": "<person1> and Ann Lee"}


def test_a_name_comes_back_given_name_first_whatever_form_met_it_first() -> None:
    """tester-priv F8: ``"O'Brien, Zoë"`` came back as ``O'Brien, Zoë's draft``."""
    p = Pseudonymiser(people=[("Li, Wei (CFO)", "li@example.cn")])
    sent = p.pseudonymise('"O\'Brien, Zoë" <zoe@example.org> wrote: Zoë O\'Brien, Sean and Wei Li agree.')
    assert sent == "<person1> <person1@example.invalid> wrote: <person1>, Sean and <person2> agree."
    assert p.restore("<person1>'s draft, <person1> <person1@example.invalid>, <person2>") == (
        "Zoë O'Brien's draft, Zoë O'Brien <zoe@example.org>, Wei Li")


def test_internationalised_quoted_literal_and_percent_encoded_addresses_are_pseudonymised() -> None:
    """Tester F2's e5.eml: every address reaches the provider as a pseudonym, the display name's
    address too, and the same address percent-encoded in a URL is the same person."""
    p = Pseudonymiser()
    text = ('From: Jörg Müller <jörg@müller.example>\nTo: "john doe"@corp.example, 用户@例子.广告\n'
            "Cc: admin@[192.168.1.1], x@localhost\n"
            "Write to jörg@müller.example or see https://corp.example/u?email=J%C3%B6rg%40m%C3%BCller.example")
    sent = p.pseudonymise(text)
    assert sent == (
        "From: <person1> <person1@example.invalid>\nTo: <person2@example.invalid>, <person3@example.invalid>\n"
        "Cc: <person4@example.invalid>, x@localhost\n"
        "Write to <person1@example.invalid> or see https://corp.example/u?email=<person1@example.invalid>")
    assert p.counts == {"email": 4, "name": 1, "phone": 0}
    answer = {"body": "<person1> <person1@example.invalid>, <person2@example.invalid>, <person3@example.invalid>, "
                      "<person4@example.invalid>"}
    assert p.restore(answer) == {"body": 'Jörg Müller <jörg@müller.example>, "john doe"@corp.example, '
                                         "用户@例子.广告, admin@[192.168.1.1]"}


def test_further_secret_shapes_are_masked_with_their_placeholders() -> None:
    """Tester F4: an OpenPGP private key block and webhook URLs (the rest: shaped_secrets)."""
    label = "PGP " + "PRIVATE KEY BLOCK"  # joined at run time: the secret scan knows the label
    block = (f"-----BEGIN {label}-----\nVersion: GnuPG v2\n\n{secrets.token_urlsafe(48)}\n"
             f"={secrets.token_hex(2)}\n-----END {label}-----")
    hook = f"T{secrets.token_hex(5).upper()}/B{secrets.token_hex(5).upper()}/{secrets.token_urlsafe(18)}"
    masker = SecretMasker()
    text = f"key:\n{block}\npost to https://hooks.slack.com/services/{hook} and {block}"
    assert masker.mask(text) == (
        "key:\n[PRIVATE_KEY_1]\npost to https://hooks.slack.com/services/[TOKEN_1] and [PRIVATE_KEY_1]")
    assert masker.counts == {"PRIVATE_KEY": 1, "TOKEN": 1}


def test_a_multi_word_name_is_replaced_wherever_it_occurs() -> None:
    p = Pseudonymiser()
    sent = p.pseudonymise("attendees: Maria de la Cruz <maria@example.com>\nnotes: ask Maria de la Cruz first")
    assert sent == ("attendees: <person1> <person1@example.invalid>\nnotes: ask <person1> first")


def test_unknown_and_mangled_pseudonyms_are_kept_and_flagged_never_guessed() -> None:
    p = Pseudonymiser()
    p.pseudonymise("Bo <bo@example.org>, +1 415 555 0100")
    restored = p.restore("<person2> <Person1@example.invalid> <person1@example.com> <phone-1 > phone-3 <person1>")
    assert restored == "<person2> <Person1@example.invalid> <person1@example.com> <phone-1 > phone-3 Bo"
    assert p.unresolved == ["<person2>", "<Person1@example.invalid>", "<person1@example.com>", "<phone-1 >", "phone-3"]


def test_the_policy_masks_every_operation_and_pseudonymises_the_configured_ones() -> None:
    request = CompletionRequest(system="Draft a reply.", user=f"bo@example.org sent {_key()}", max_tokens=10)
    policy = PrivacyPolicy.of(["email-respond"], ["US"])
    sent, privacy = policy.minimise("email-respond", request)
    assert sent.user == "<person1@example.invalid> sent [API_KEY_1]"
    assert privacy.ledger_counts() == {"masked": {"api_key": 1}, "pseudonymised": {"email": 1}}
    sent, privacy = policy.minimise("task-breakdown", request)
    assert sent.user == "bo@example.org sent [API_KEY_1]"
    assert privacy.report() == {"masked": {"api_key": 1}, "pseudonymised": {}, "unresolved_pseudonyms": []}


def test_a_system_prompt_with_nothing_to_minimise_is_searched_once_per_held_secrets(monkeypatch) -> None:
    """The rendered system prompt, the same for most calls, is searched once; a secret held
    later is still masked in it, and a prompt with personal data is pseudonymised every call."""
    searched: list[str] = []
    mask = SecretMasker.mask
    monkeypatch.setattr(SecretMasker, "mask", lambda self, text: searched.append(text) or mask(self, text))
    policy = PrivacyPolicy.of(["email-respond"], ["US"])
    prompt = "Draft a reply to the sender, signed " + secrets.token_hex(20)
    request = CompletionRequest(system=prompt, user="bo@example.org wrote", max_tokens=10)
    for _ in range(3):
        sent, privacy = policy.minimise("email-respond", request)
        assert (sent.system, sent.user) == (prompt, "<person1@example.invalid> wrote")
        assert privacy.ledger_counts() == {"masked": {}, "pseudonymised": {"email": 1}}
    assert searched.count(prompt) == 1
    hold_secret(prompt[-40:])
    sent, privacy = policy.minimise("email-respond", request)
    assert sent.system == prompt[:-40] + "[SECRET_1]"
    assert privacy.ledger_counts()["masked"] == {"secret": 1}
    personal = CompletionRequest(system="Sign as: Ann Lee <ann@example.org>.", user="Thanks", max_tokens=10)
    for _ in range(2):
        sent, _ = policy.minimise("email-respond", personal)
        assert sent.system == "Sign as: <person1> <person1@example.invalid>."
    assert not any(key[0] == personal.system for key in policy.as_is)


def test_a_policy_naming_an_unknown_operation_is_refused() -> None:
    try:
        PrivacyPolicy.of(["email-respond", "email-sned"], ["US"])
    except ValueError as exc:
        assert "email-sned" in str(exc)
    else:
        raise AssertionError("an unknown operation id was accepted")


def test_no_number_the_full_phonenumbers_matcher_finds_survives() -> None:
    """The pseudonymiser hands only digit runs to ``phonenumbers``; the matcher run over the whole
    text afterwards finds nothing it missed."""
    import phonenumbers

    text = ("Ring +1 (415) 555-0100, 415.555.0100 or 1-800-555-0199; London 020 7946 0958 or "
            "+44 (0)20 7946 0958; Berlin +49 30 901820; desk (212) 555 0134 ext. 7.\n"
            "Not phones: 2026-03-02T09:30, 10.194.236.201, order 20120113, build 20592.1022586929.4")
    regions = ["US", "GB"]

    def found(t: str) -> int:
        return sum(1 for r in regions for _ in phonenumbers.PhoneNumberMatcher(t, r, leniency=phonenumbers.Leniency.VALID))

    assert found(text) == 10  # seven numbers written, some found in both regions
    p = Pseudonymiser(regions)
    sent = p.pseudonymise(text)
    assert found(sent) == 0
    assert p.counts["phone"] == 5  # distinct by E.164: 415 555 0100 and the London number twice each
    assert "2026-03-02T09:30, 10.194.236.201, order 20120113, build 20592.1022586929.4" in sent


def test_each_shape_is_masked_whole_with_its_placeholder() -> None:
    planted = shaped_secrets()
    text = "\n".join(line for line, _, _ in planted.values())
    masked = SecretMasker().mask(text)
    lines = masked.split("\n")
    for (name, (line, secret, placeholder)), out in zip(planted.items(), lines, strict=True):
        value = secret_in(name, line, secret)
        assert value not in out and value[-4:] not in out, (name, out)
        assert out == line.replace(value, placeholder), (name, out)


def test_the_testers_repro_masks_the_whole_password() -> None:
    masked = SecretMasker().mask("The password is: Tr0ub4dor&3xyz!")
    assert masked == "The password is: [PASSWORD_1]"


def test_ordinary_prose_about_passwords_and_numbers_passes() -> None:
    text = ("The password is incorrect; the passphrase is not set. Your pass is ready at gate 5.\n"
            "Invoice 2025-03-14 for 1,234.50 USD, ticket #4821, order 123-456, build 9f3a2c1.")
    masker = SecretMasker()
    assert masker.mask(text) == text and masker.counts == {}



def test_a_phone_number_of_seven_digits_in_any_script_is_pseudonymised() -> None:
    """The search that lets a text skip the phone scan (issue 21) finds the fewest digits a
    number has (Niue's ``+683 4002``: seven), every script's digits (Arabic-Indic) and three
    separators between two digits, each text on its own."""
    p = Pseudonymiser(("US", "GB"))
    arabic = "+\u0664\u0664 \u0662\u0660 \u0667\u0669\u0664\u0666 \u0660\u0669\u0665\u0668"
    assert p.pseudonymise("ring +683 4002") == "ring <phone-1>"
    assert p.pseudonymise(f"or {arabic}") == "or <phone-2>"
    assert p.pseudonymise("or 020 - 7946 - 0959") == "or <phone-3>"
    assert p.pseudonymise("at 12:30 on day 45") == "at 12:30 on day 45"
    assert p.restore("<phone-1>, <phone-2>, <phone-3>") == f"+683 4002, {arabic}, 020 - 7946 - 0959"


def test_pseudonyms_in_any_letter_case_are_looked_at_when_restoring() -> None:
    """Restoring skips strings without ``person`` or ``phone`` (issue 21), in any letter case:
    a mangled ``<PHONE-1 >`` or ``PERSON2@EXAMPLE.INVALID`` is still listed as unresolved."""
    p = Pseudonymiser(("US", "GB"))
    assert p.pseudonymise("ring +44 20 7946 0958") == "ring <phone-1>"
    assert p.restore({"a": "Call <PHONE-1 > or PERSON2@EXAMPLE.INVALID", "b": ["no one", "<phone-1>"]}) == {
        "a": "Call <PHONE-1 > or PERSON2@EXAMPLE.INVALID", "b": ["no one", "+44 20 7946 0958"]}
    assert p.unresolved == ["<PHONE-1 >", "PERSON2@EXAMPLE.INVALID"]
