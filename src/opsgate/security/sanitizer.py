"""One sanitizer for every sink: logs, tracebacks, problem+json, alert payloads and reports.

:func:`sanitize` replaces secrets and personal data in text with ``[REDACTED:<kind>:<hash>]``, where
``<hash>`` is the first 6 hex digits of HMAC-SHA256(key, normalised value). The key is random per
process unless :func:`configure` sets one (``OPSGATE_REDACTION_KEY``), so the same value correlates
across lines without being revealed. The output is a fixed point: ``sanitize(sanitize(t)) ==
sanitize(t)``. :func:`sanitize_obj` walks dicts, lists and tuples; a dict key that names a sensitive
field (:func:`is_sensitive_name`: ``password``, ``pwd``, ``secret``, ``token``, ``auth``,
``bearer``, ``api_key``, ``privateKey``, ``accessKeyId``, ``AccountKey``, ``cookie``, … in
snake_case, kebab-case, camelCase or run together) redacts everything under it.

Every value opsgate holds as a secret -- every secret of the settings (:func:`settings_secrets`:
``SecretStr`` fields, URL passwords, key files, named endpoints' keys), every value the secret
store reads (:mod:`opsgate.security.secrets`), the 1Password Connect token and the key files read
later (JWT, master key, metrics token) -- is registered with :func:`hold_secret` and
replaced *literally* wherever it appears, whatever its shape (kind ``secret``), before any other
rule runs. Values shorter than :data:`MIN_HELD_SECRET` characters are not held (they would blank
ordinary words).

Kinds and what they match (vectors: ``tests/vectors/redaction.json``):

=========== ===========================================================================
anthropic   ``sk-ant-…`` keys (Anthropic console key format)
openai      ``sk-…``, ``sk-proj-…`` keys (OpenAI, DeepSeek and other OpenAI-compatible APIs)
google      ``AIza`` + 35 characters (Google API keys, Gemini)
github      ``ghp_ gho_ ghu_ ghs_ ghr_`` + 36 characters, ``github_pat_…`` (GitHub token formats)
slack       ``xoxa- xoxb- xoxp- xoxr- xoxs- xoxe-`` and ``xoxe.xoxp-`` tokens and ``xapp-``
            app-level tokens (Slack "Token types")
webhook     the credential path of Slack (``https://hooks.slack.com/services/…``, ``/workflows/``,
            ``/triggers/``) and Discord (``https://discord.com/api/webhooks/<id>/<token>``, also
            ``discordapp.com``, ``canary.``/``ptb.`` and ``/api/v10/``) webhook URLs: whoever has
            the URL can post
aws         ``AKIA``/``ASIA`` access key ids
aws_secret  a secret access key (40 of ``A-Za-z0-9/+``, upper and lower case) within 40 characters
            after the word ``aws`` on its line (``aws secret wJalr…``); by field name: ``field``
stripe      ``sk_`` / ``rk_`` + ``live_`` / ``test_`` / ``prod_`` + 10-99 alphanumerics (Stripe API
            keys; gitleaks rule ``stripe-access-token``)
gitlab      ``glpat- gldt- glrt- glptt- glcbt- gloas-`` + 20 or more of ``[A-Za-z0-9_-]``, with the
            routable ``.`` + 9 suffix (GitLab docs "Token prefixes"; gitleaks ``gitlab-*`` rules)
huggingface ``hf_`` + 34 letters (Hugging Face user access tokens; gitleaks
            ``huggingface-access-token``)
npm         ``npm_`` + 36 alphanumerics (npm access tokens; gitleaks ``npm-access-token``)
sendgrid    ``SG.`` + 22 + ``.`` + 43 of ``[A-Za-z0-9_-]`` (SendGrid API keys, 69 characters;
            gitleaks ``sendgrid-api-token``)
twilio      ``SK`` + 32 hex digits (Twilio API key SIDs; gitleaks ``twilio-api-key``)
jwt         JWS compact serialisations (RFC 7515) including unsigned ``alg: none`` ones
pem         PEM private key blocks (RFC 7468) and OpenPGP armored private keys (RFC 4880 §6.2),
            also when cut short
bearer      ``Bearer <b64token>`` credentials (RFC 6750 §2.1)
basic       ``Basic <base64(user:password)>`` credentials (RFC 7617)
url_cred    ``user:password@`` in URLs (RFC 3986 §3.2.1): the user may be empty (``redis://:pw@``)
            and the password may hold ``@`` (the host is what follows the last ``@``)
param       ``key=`` and ``sig=`` query parameters
secret      a value held by :func:`hold_secret` (settings secrets, secret-store values)
field       the value of a sensitive field (``name=value``, ``name: value``, ``name is: value``,
            ``the password is value``, ``Password - value``, JSON, headers), in English, German,
            Dutch, Norwegian, French, Spanish and Portuguese words for password; where the value
            ends in each of these contexts: :data:`_FIELD`
email       addresses (:data:`opsgate.security.addresses.EMAIL`: RFC 5322 addr-spec with a quoted
            local part or domain literal, RFC 6531 UTF-8, ``%40`` in URLs), hashed in the form
            all spellings share (:func:`~opsgate.security.addresses.address_key`)
phone       numbers ``phonenumbers``' own ``PhoneNumberMatcher`` finds valid (``Leniency.VALID``)
            in an international format or in one of the configured regions (ISO 3166-1
            alpha-2 codes) -- every national format it accepts (``07911 123456`` in GB,
            ``01 42 68 53 00`` in FR, ``089/1234567`` in DE); hashed as E.164
card        13–19 digit payment card numbers with a card-network prefix and a valid Luhn digit
iban        IBANs (ISO 13616) with a valid mod-97 check
ssn         US Social Security numbers ``AAA-GG-SSSS`` with a valid area (not 000, 666 or 900-999),
            group (not 00) and serial (not 0000) (SSA, "Social Security Number Randomization")
=========== ===========================================================================

Every replacement adds one to the process's redaction count of its kind
(:data:`opsgate.security.counts.COUNTS`).

Speed (``./dev bench sanitizer``): three searches per line find which rules can possibly match --
the literal needles and sensitive words in the lower-cased line, the capital-led needles and the
start of an IBAN, and a digit run the ``digits`` rule could match that is not an ISO date, an IPv4
address or a UUID. A line none of them finds anything in is returned as it is (a text of many
lines is searched whole, and only the lines with a hit are visited); the others meet one compiled
alternation of just the rules whose triggers occur. These searches are a superset of the rules,
never a filter: ``phonenumbers`` sees every digit run of 7+ digits with phone punctuation between
(the same candidates its matcher would consider), never a shape-filtered subset.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload
from urllib.parse import unquote, urlsplit

import phonenumbers
from pydantic import SecretStr

from opsgate.security.addresses import EMAIL, address_key
from opsgate.security.counts import COUNTS, REDACTION

if TYPE_CHECKING:
    from opsgate.config import Settings

HASH_HEX = 6
PLACEHOLDER = r"\[[A-Z]+(?:_[A-Z]+)*_[0-9]+\]"
"""A typed placeholder that stands for a masked secret in a prompt (``[API_KEY_1]``, see
:mod:`opsgate.security.masking`): like a redaction token, it is never redacted again."""
_DONE = rf"\[REDACTED:[a-z_]+:[0-9a-f]{{{HASH_HEX}}}\]|{PLACEHOLDER}"
TOKEN_RE = re.compile(_DONE)

SENSITIVE_WORDS = frozenset({
    "pass", "pwd", "pw", "pin", "token", "auth", "bearer", "jwt", "otp", "totp", "dsn",
    "signature", "sig", "cred", "creds", "passe", "senha",
})  # fmt: skip
"""Whole words of a field name that make it sensitive (``db_pass``, ``authToken``, ``pwd``;
``mot de passe``, ``senha``)."""

SENSITIVE_PARTS = (
    "password", "passwd", "passphrase", "passcode", "secret", "credential", "cookie",
    "authorization", "apikey", "accesskey", "privatekey", "signingkey", "secretkey",
    "encryptionkey", "masterkey", "sessionid", "sessiontoken", "accesstoken", "refreshtoken",
    "idtoken", "authtoken", "bearertoken", "clientsecret", "webhookurl", "accountkey",
    "passwort", "kennwort", "wachtwoord", "passord", "contrase",
)  # fmt: skip
"""Parts of a field name, read with its words run together in lower case (``accessKeyId`` ->
``accesskeyid``), that make it sensitive (``passwort``, ``kennwort``: German; ``wachtwoord``:
Dutch; ``passord``: Norwegian; ``contrase``: Spanish ``contraseña``; ``accountkey``: the key of an
Azure storage or Cosmos DB connection string, ``AccountKey=…``)."""

_NOT_SENSITIVE = re.compile(r"(?i)tokens$|token_?count|tokeni[sz]e|_tokens_|tokens_")
"""Names that contain a sensitive word but carry counts (``input_tokens``, ``max_tokens``)."""

_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
"""The words of a snake_case, kebab-case, camelCase or PascalCase name."""

_NAME = (r"pass|pwd|pw|pin|token(?!s)|auth|bearer|jwt|otp|dsn|sig|cred|secret|cookie|key|session"
         r"|webhook|kennwort|wachtwoord|senha|contrase")
"""Substrings one of which every sensitive name contains (the ``field`` rule's candidates; the
replacer decides with :func:`is_sensitive_name`)."""
_PROSE_NAME = (r"passw|passphrase|passcode|passord|pwd|pin(?![a-z])|kennwort|wachtwoord|senha"
               r"|contrase")
"""Names that take a value after a bare ``is`` or a dash (``the passphrase is …``, ``Password -
…``): words for a password only -- after ``token is`` or ``auth -`` comes prose far more often."""
_NOT_A_VALUE = (
    "not", "no", "wrong", "incorrect", "invalid", "expired", "missing", "required", "optional",
    "valid", "too", "the", "a", "an", "set", "unset", "empty", "blank", "weak", "strong",
    "case", "stored", "saved", "changed", "reset", "being", "still", "now", "also", "same",
    "different", "hidden", "masked", "redacted", "unknown", "known", "ok", "fine", "good", "bad",
    "long", "short", "secure", "insecure", "sent", "in", "on", "at", "below", "above", "attached",
    "here", "there", "ready", "due", "about", "going", "compromised", "locked", "disabled",
    "enabled", "needed", "your", "my", "his", "her", "their", "our", "its", "this", "that", "what",
    "which", "encrypted", "hashed", "shown", "updated", "generated", "provided", "used", "only",
    "just", "very", "please", "and", "or", "for", "to", "of", "by", "with", "should", "must",
)  # fmt: skip
"""Words that follow ``the password is`` in prose about a password rather than before one
(``the password is wrong``): a bare ``is`` or dash followed by one of them takes no value.
``correct`` is not one of them: ``the passphrase is correct horse battery staple``."""
_PROSE_AFTER_COLON = rf"(?:{'|'.join(_NOT_A_VALUE)})(?![\w-])[ \t]+[^\s]"
"""After ``name:``, a word of :data:`_NOT_A_VALUE` that more words follow on the line is prose about
the field (``ANTHROPIC_API_KEY: no ANTHROPIC_API_KEY_ROTATED_AT, so ...``, ``password: not set
yet``), not its value. A ``name: value`` value is one word, so a secret with a space in it was
never caught whole by this form; such a word alone (``password: no``) or glued to more
(``token: the1ring``, ``pin: no,``) is still the value."""
_CLOSING_QUOTE = r"[\"'](?![^\s,;:}\])>])"
"""A quote that ends the string a value sits in (JSON, a Python repr, an HTML attribute): one
followed by whitespace, ``, ; : } ] ) >`` or the end. Any other quote is part of the value."""
_QUOTED = r"\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'"
_SCHEME = r"(?:(?:Bearer|Basic|Token|Digest)\s+)?"
_WORD_RUN = rf"(?:{_DONE}|[^\s\"']|(?!{_CLOSING_QUOTE})[\"'])+"
"""A value written as one word: every character up to whitespace or a closing quote (a token
inside it is taken whole, so a value is never cut inside a token's brackets: that made
``orgtoken: password=…`` grow one ``]`` per pass)."""
_PAIR_END = r"[&;](?=\s|$|\s*[\w.%\[\]-]+(?: [\w.%\[\]-]+)?=)"
"""``&`` or ``;`` that separates ``name=value`` pairs (URL queries and form bodies, WHATWG URL
§5.1; connection strings; cookies, RFC 6265 §4.2.1): one before another ``name=``, whitespace or
the end. Any other ``&`` or ``;`` is part of the value (``password=Tr0ub4dor&3xyz``)."""
_PAIR_RUN = rf"(?:{_DONE}|[^\s\"'&;]|(?!{_CLOSING_QUOTE})[\"']|(?!{_PAIR_END})[&;])+"
_LITERAL_RUN = rf"(?:{_DONE}|[^\s\"',}}\])]|(?!{_CLOSING_QUOTE})[\"'])+"
"""A bare literal after a quoted key (``"pin": 1234,``, ``'token': None}``): ends at whitespace,
``, } ] )`` or a closing quote, the syntax around it."""
_PROSE_RUN = rf"{_WORD_RUN}(?:[ \t]+{_WORD_RUN})*"
_FIELD_NAME = rf"[\w.-]*?(?:{_NAME})[\w.-]*"
_FIELD = (
    rf"(?i)(?<![A-Za-z0-9])(?:"
    rf"(?<=[\"']){_FIELD_NAME}[\"']\s*[:=]\s*(?:{_DONE}|{_QUOTED}|{_LITERAL_RUN})"
    rf"|{_FIELD_NAME}(?:[\"']?\s*=\s*(?:{_DONE}|{_QUOTED}|{_SCHEME}{_PAIR_RUN})"
    rf"|[\"']?\s*:\s*(?!{_PROSE_AFTER_COLON})(?:{_DONE}|{_QUOTED}|{_SCHEME}{_WORD_RUN})"
    rf"|\s+is\s*:\s*(?:{_DONE}|{_QUOTED}|{_PROSE_RUN}))"
    rf"|[\w.-]*?(?:{_PROSE_NAME})[\w.-]*\s+(?:is|[-\u2013\u2014])\s+"
    rf"(?!(?:{'|'.join(_NOT_A_VALUE)})(?![\w-]))(?:{_DONE}|{_QUOTED}|{_PROSE_RUN}))"
)
"""A sensitive field and its value. What ends the value depends on how it is written:

* a quoted value (``"a,b}c"``, ``'x'``) ends at its closing quote, wherever it stands;
* after a quoted key (JSON, a Python repr: ``"pin": 1234}``) a bare literal ends at whitespace,
  ``, } ] )`` or a closing quote;
* ``name=value`` ends at whitespace, a closing quote, or an ``&``/``;`` that starts the next
  pair (:data:`_PAIR_END`);
* ``name: value`` ends at whitespace or a closing quote: every other character (``& ; , } ] )
  !``) belongs to it, so trailing punctuation is masked with the value -- a comma too many
  beats a character of a password in clear; a word of :data:`_NOT_A_VALUE` that more words
  follow is prose, not a value (:data:`_PROSE_AFTER_COLON`);
* prose -- ``name is: value`` for any sensitive name, ``the password is value`` and ``Password -
  value`` for :data:`_PROSE_NAME` -- runs to the end of the line or a closing quote, because a
  passphrase has spaces in it (``the passphrase is correct horse battery staple``); a bare ``is``
  or dash followed by a word of :data:`_NOT_A_VALUE` is prose about a password, not one.
"""

class _Rule:
    """One alternative of the combined pattern: ``name`` (its regex group), ``regex``, and the
    ``needles`` of its pre-filter (one must occur in the text, or in its lower-case form with
    ``lower``); rules without needles have their own pre-filter in :func:`_mask`."""

    def __init__(self, name: str, regex: str, needles: Iterable[str] = (), lower: bool = False):
        self.name, self.regex, self.needles, self.lower = name, regex, tuple(needles), lower


_DIGITS = r"(?<![\w.+/@#-])(?:\+|\(\+?)?\d(?:(?:[ ./-]|\) ?| ?\(|\)[ ./-])?\d)"
"""The start of a digit run with phone punctuation (``+``, brackets, one of `` ./-``) between the
digits; the ``digits`` rule repeats the group 6-18 times."""


RULES: tuple[_Rule, ...] = (
    _Rule("token", r"\[REDACTED:[a-z_]+:[0-9a-f]{6}\]", ["[REDACTED:"]),
    _Rule(
        "header",
        r"(?im)(?<![\w-])(?:set-cookie|cookie|proxy-authorization|authorization)(?=:[ \t])"
        rf":[ \t]*+(?!{_DONE})[^\r\n]+",
        ["cookie", "authorization"],
        lower=True,
    ),
    _Rule("url_cred", rf"(?i)\b[a-z][a-z0-9+.-]{{1,15}}://(?!{_DONE})[^\s/?#:\"'<>]*+:(?!@)"
          rf"[^\s/?#\"'<>]*@"),
    _Rule("email", EMAIL, ["@", "%40"]),
    _Rule("param", rf"(?i)(?<=[?&;])(?:key|sig)=(?!{_DONE})[^&\s#\"'<>]+", ["key=", "sig="]),
    _Rule("field", _FIELD),
    _Rule("bearer", r"(?i)\bbearer\s+(?=[A-Za-z0-9._~+/-]*[0-9._~+/-])[A-Za-z0-9._~+/-]{8,}=*",
          ["bearer "], lower=True),
    _Rule("basic", r"(?i)\bbasic\s+[A-Za-z0-9+/]{4,}={0,2}(?![\w+/=])", ["basic "], lower=True),
    _Rule("jwt", r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*", ["eyJ"]),
    _Rule("anthropic", r"(?<![\w-])sk-ant-[A-Za-z0-9_-]{20,}", ["sk-ant-"]),
    _Rule("openai", r"(?<![\w-])sk-[A-Za-z0-9_-]{20,}"),
    _Rule("google", r"(?<![\w-])AIza[0-9A-Za-z_-]{35}(?![\w-])", ["AIza"]),
    _Rule("github", r"(?<![\w-])(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22,})(?!\w)",
          ["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"]),
    _Rule("slack", r"(?<![\w-])(?:xox[abeprs](?:\.xox[bp])?|xapp)-[A-Za-z0-9-]{10,}",
          ["xox", "xapp-"]),
    _Rule("webhook", rf"(?i)\bhttps?://(?:hooks\.slack\.com/(?:services|workflows|triggers)/"
          rf"|(?:(?:canary|ptb)\.)?discord(?:app)?\.com/api(?:/v\d{{1,2}})?/webhooks/)"
          rf"(?!{_DONE})[\w/-]+", ["hooks.slack.com/", "/webhooks/"], lower=True),
    _Rule("aws", r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])", ["AKIA", "ASIA"]),
    _Rule("aws_secret", r"(?<![A-Za-z0-9])(?i:aws)(?![A-Za-z0-9])[^\n]{0,40}?(?<![A-Za-z0-9/+=])"
          r"(?=[A-Za-z0-9/+]{0,39}[A-Z])(?=[A-Za-z0-9/+]{0,39}[a-z])[A-Za-z0-9/+]{40}"
          r"(?![A-Za-z0-9/+=])", ["aws"], lower=True),
    _Rule("stripe", r"(?<![\w-])[rs]k_(?:live|test|prod)_[0-9A-Za-z]{10,99}(?![\w-])",
          ["k_live_", "k_test_", "k_prod_"]),
    _Rule("gitlab", r"(?<![\w-])gl(?:pat|dt|rt|ptt|cbt|oas)-[\w-]{20,}(?:\.[0-9a-z]{9})?(?![\w-])",
          ["glpat-", "gldt-", "glrt-", "glptt-", "glcbt-", "gloas-"]),
    _Rule("huggingface", r"(?<![\w-])hf_[A-Za-z]{34}(?![\w-])", ["hf_"]),
    _Rule("npm", r"(?<![\w-])npm_[A-Za-z0-9]{36}(?![\w-])", ["npm_"]),
    _Rule("sendgrid", r"(?<![\w-])SG\.[\w-]{22}\.[\w-]{43}(?![\w-])", ["SG."]),
    _Rule("twilio", r"(?<![\w-])SK[0-9a-fA-F]{32}(?![\w-])", ["SK"]),
    _Rule("iban", r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?"
          r"(?![A-Za-z0-9])"),
    # Skipped whole so that no digit rule starts inside them: ISO 8601 times, IPv4, UUIDs.
    _Rule("skip", r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)?"
          r"|(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])"
          r"|(?<![\w-])[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}(?![\w-])"),
    _Rule("ssn", r"(?<![\w.+/@#-])(?!000|666|9)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])"),
    _Rule("digits", _DIGITS + r"{6,18}(?![\w])"),
)  # fmt: skip


_MAX_PASSES = 4
MIN_HELD_SECRET = 8
MAX_HELD_SECRETS = 256
"""Held secrets kept at most (the oldest is dropped first): a deployment holds a handful; a test
session that configures many gateways must not make every line pay for all of them."""

class Sanitizer:
    """Redacts secrets and personal data; see the module docstring for kinds and formats.

    ``key`` is the HMAC key for the correlation hashes (random when None); ``phone_regions`` the
    ISO 3166-1 alpha-2 regions national phone numbers are read in (``ValueError`` for one
    ``phonenumbers`` does not support).
    """

    def __init__(self, key: bytes | None = None, phone_regions: Iterable[str] = ("US", "GB"),
                 held: Iterable[str] = ()):
        self._key = key or secrets.token_bytes(32)
        self._held: dict[str, None] = dict.fromkeys(held)
        self._regions = tuple(r.upper() for r in phone_regions)
        unknown = [r for r in self._regions if r not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown phone region codes: {unknown}")

    @cached_property
    def _replacers(self) -> dict[str, Callable[[re.Match[str]], str]]:
        """Built on the first match, not per instance: most texts have none, and a
        :class:`~opsgate.security.masking.SecretMasker` lives for one call."""
        return {
            "token": _same, "skip": _same, "pem": self._whole("pem"), "header": self._header,
            "url_cred": self._url_cred, "param": self._param, "field": self._field,
            "bearer": self._whole("bearer"), "basic": self._basic, "jwt": self._whole("jwt"),
            "anthropic": self._whole("anthropic"), "openai": self._whole("openai"),
            "google": self._whole("google"), "github": self._whole("github"),
            "slack": self._whole("slack"), "webhook": self._webhook, "aws": self._whole("aws"),
            "aws_secret": self._aws_secret, "stripe": self._whole("stripe"),
            "gitlab": self._whole("gitlab"), "huggingface": self._whole("huggingface"),
            "npm": self._whole("npm"), "sendgrid": self._whole("sendgrid"),
            "twilio": self._whole("twilio"), "ssn": self._whole("ssn"), "email": self._email,
            "iban": self._iban, "digits": self._digits,
        }  # fmt: skip

    @property
    def held(self) -> tuple[str, ...]:
        """The secret values replaced literally (see :meth:`hold`)."""
        return tuple(self._held)

    def hold(self, value: str) -> None:
        """Replace ``value`` literally wherever it appears from now on (kind ``secret``); values
        shorter than :data:`MIN_HELD_SECRET` characters or found inside a redaction token are
        ignored."""
        if len(value) >= MIN_HELD_SECRET and not re.fullmatch(r"[\[A-Za-z_:]+", value):
            self._held.pop(value, None)
            self._held[value] = None
            while len(self._held) > MAX_HELD_SECRETS:
                del self._held[next(iter(self._held))]

    def sanitize(self, text: str) -> str:
        """``text`` with every match replaced by ``[REDACTED:<kind>:<hash>]``.

        Held secrets and PEM blocks are found in the whole text; every other rule works line by
        line, so each line only meets the rules its triggers admit, and a text of many lines is
        searched whole for the lines any trigger occurs in (the others are kept as they are).
        """
        if not text:
            return text
        if self._held:
            text = self._literals(text)
        if "PRIVATE KEY" in text:
            text = _PEM.sub(self._replace, text)
        if "\n" in text:
            return self._lines(text)
        return self._line(text)

    def _literals(self, text: str) -> str:
        """Held secrets replaced literally: ``in`` finds which occur (faster than any regex over a
        few hundred values), one alternation of those, longest first, replaces them, so a held
        value that contains another is replaced whole."""
        found = tuple(value for value in self._held if value in text)
        if not found:
            return text
        return _literal_pattern(found).sub(lambda m: self.token("secret", m.group()), text)

    def _lines(self, text: str) -> str:
        """Every line of ``text`` through :meth:`_line`; only the lines a trigger of :func:`_mask`
        occurs in are visited (found by searching the whole text), the others are kept."""
        lowered = text.lower()
        if len(lowered) != len(text):  # a few characters lower-case to two: offsets would differ
            return "\n".join([self._line(line) for line in text.split("\n")])
        starts = {text.rfind("\n", 0, m.start()) + 1 for m in _hits(text, lowered)}
        if not starts:
            return text
        parts, done = [], 0
        for start in sorted(starts):
            end = text.find("\n", start)
            end = len(text) if end < 0 else end
            parts += [text[done:start], self._line(text[start:end])]
            done = end
        parts.append(text[done:])
        return "".join(parts)

    def _line(self, text: str) -> str:
        """One line; a line that changed is passed again, because a redaction can expose a
        neighbour (``AKIA…sk-…`` glued together: the ``sk-`` key only stands alone once the
        AWS id is replaced), so the result is a fixed point and redaction is idempotent."""
        for _ in range(_MAX_PASSES):
            mask = _mask(text)
            if mask <= 1:
                return text
            redacted = _combined(mask).sub(self._replace, text)
            if redacted == text:
                return text
            text = redacted
        return text

    def sanitize_obj(self, obj: object) -> object:
        """A copy of ``obj`` with every string sanitized; dicts, lists and tuples are walked.

        Under a sensitive key (see :data:`SENSITIVE_WORDS`) every scalar leaf becomes a
        ``field`` token; other scalars (int, float, bool, None) are kept as they are.
        """
        return self._walk(obj, False)

    def token(self, kind: str, value: str) -> str:
        """The replacement for ``value``: ``[REDACTED:<kind>:<6 hex of HMAC-SHA256>]``; counted
        as one ``redaction`` of ``kind`` (:mod:`opsgate.security.counts`)."""
        COUNTS.add(REDACTION, kind)
        digest = hmac.new(self._key, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return f"[REDACTED:{kind}:{digest.hexdigest()[:HASH_HEX]}]"

    def field_token(self, name: str, value: str) -> str:
        """The replacement for the ``value`` of the sensitive field ``name`` (``password``,
        ``Authorization``, ``The password is``): :meth:`token` of kind ``field``."""
        return self.token("field", value)

    def _walk(self, obj: Any, forced: bool) -> Any:
        if isinstance(obj, str):
            return obj if TOKEN_RE.fullmatch(obj) else (
                self.token("field", obj) if forced else self.sanitize(obj))
        if isinstance(obj, dict):
            return {
                self._walk(k, False) if isinstance(k, str) else k: self._walk(
                    v, forced or is_sensitive_name(k)
                )
                for k, v in obj.items()
            }
        if isinstance(obj, list | tuple):
            return type(obj)(self._walk(v, forced) for v in obj)
        if forced and obj is not None and not isinstance(obj, bool):
            return self.token("field", str(obj))
        return obj

    def _replace(self, m: re.Match[str]) -> str:
        return self._replacers[m.lastgroup or "token"](m)

    def _whole(self, kind: str) -> Callable[[re.Match[str]], str]:
        return lambda m: self.token(kind, m.group())

    def _header(self, m: re.Match[str]) -> str:
        name, _, value = m.group().partition(":")
        return f"{name}: {self.field_token(name, value.strip())}"

    def _url_cred(self, m: re.Match[str]) -> str:
        scheme, _, cred = m.group()[:-1].partition("://")
        return f"{scheme}://{self.token('url_cred', cred)}@"

    def _webhook(self, m: re.Match[str]) -> str:
        """The path after ``/services/``, ``/workflows/``, ``/triggers/`` or ``/webhooks/``, which
        is the credential, redacted; the host and the path before it say whose webhook it was."""
        text = m.group()
        cut = _WEBHOOK_PATH.search(text)
        assert cut is not None  # the rule requires one
        return text[: cut.end()] + self.token("webhook", text[cut.end():])

    def _param(self, m: re.Match[str]) -> str:
        name, _, value = m.group().partition("=")
        return f"{name}={self.token('param', value)}"

    def _field(self, m: re.Match[str]) -> str:
        text = m.group()
        sep = _SEPARATOR.search(text)
        assert sep is not None  # the rule requires one
        name, value = text[: sep.start()], text[sep.end():]
        quote = value[0] if value[0] in "\"'" and len(value) > 1 and value[-1] == value[0] else ""
        inner = value[1:-1] if quote else value
        if not is_sensitive_name(name) or TOKEN_RE.fullmatch(inner):
            inner = self.sanitize(inner)
        else:
            inner = self.field_token(name, inner)
        return self.sanitize(name) + sep.group() + quote + inner + quote

    def _aws_secret(self, m: re.Match[str]) -> str:
        """The 40 characters of the key, not the words before it that told it apart."""
        text = m.group()
        return text[:-40] + self.token("aws_secret", text[-40:])

    def _basic(self, m: re.Match[str]) -> str:
        scheme, _, cred = m.group().partition(" ")
        try:
            decoded = base64.b64decode(cred.strip(), validate=True)
        except (binascii.Error, ValueError):
            return m.group()
        return f"{scheme} {self.token('basic', cred.strip())}" if b":" in decoded else m.group()

    def _email(self, m: re.Match[str]) -> str:
        return self.token("email", address_key(m.group()))

    def _iban(self, m: re.Match[str]) -> str:
        compact = m.group().replace(" ", "")
        return self.token("iban", compact) if iban_valid(compact) else _sanitize_digits_in(self, m)

    def _digits(self, m: re.Match[str]) -> str:
        text = m.group()
        digits = re.sub(r"\D", "", text)
        if card_valid(digits) and not text.startswith(("+", "(")):
            return self.token("card", digits)
        return self._phones(text)

    def _phones(self, text: str) -> str:
        spans: list[tuple[int, int, str]] = []
        for region in self._regions:
            if spans and _all_digits_in(text, spans):
                break  # a number another region finds could only overlap one already found
            for found in phonenumbers.PhoneNumberMatcher(
                text, region, leniency=phonenumbers.Leniency.VALID
            ):
                if not any(s < found.end and found.start < e for s, e, _ in spans):
                    e164 = phonenumbers.format_number(
                        found.number, phonenumbers.PhoneNumberFormat.E164
                    )
                    spans.append((found.start, found.end, e164))
        for start, end, e164 in sorted(spans, reverse=True):
            text = text[:start] + self.token("phone", e164) + text[end:]
        return text


_PEM = re.compile(
    r"(?P<pem>-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
    r"(?:(?:[^-]++|-(?!----(?:BEGIN|END)))*+-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
    r"|(?:\s*[A-Za-z][A-Za-z0-9-]*:[ \t][^\r\n]*)*+[A-Za-z0-9+/=\s:,-]*+))"
)
"""Private key blocks: PEM (RFC 7468: ``PRIVATE KEY``, ``RSA PRIVATE KEY``, ``ENCRYPTED PRIVATE
KEY``, ``OPENSSH PRIVATE KEY``, ...) and OpenPGP ASCII armor (RFC 4880 §6.2, the ``PRIVATE KEY
BLOCK`` label), whole, or when cut short to the end of its header lines (``Proc-Type:``,
``Version:``, ``Comment:``) and base64. Linear: the body is taken possessively up to the next
``-----BEGIN`` or ``-----END``, so each character is read by one block's attempt."""

_WEBHOOK_PATH = re.compile(r"(?i)/(?:services|workflows|triggers|webhooks)/")
"""Where the credential of a ``webhook`` match starts."""

_BIT = {rule.name: 1 << i for i, rule in enumerate(RULES)}


_IBAN_START = r"[A-Z][A-Z][0-9][0-9](?<![A-Za-z0-9]..[0-9][0-9])"
"""Where the ``iban`` rule could match (two capitals and two digits that start a word)."""


_DIGIT_BITS = _BIT["iban"] | _BIT["skip"] | _BIT["ssn"] | _BIT["digits"]


def _triggers() -> tuple[re.Pattern[str], re.Pattern[str], tuple[tuple[int, re.Pattern[str], bool], ...]]:
    """The two gates, which find nothing in most lines, and the per-rule triggers that only a
    line a gate lets through meets (``(bits, pattern, lower)``: searched in the lower-cased line
    when ``lower``).

    * The lower-case gate: one alternation of every rule's literal triggers in lower case,
      searched in the lower-cased line (:func:`_anchored` says how it stays fast).
    * The exact gate: the literal triggers that start with a capital (``AKIA``, ``ASIA``,
      ``AIza``) and the start of an IBAN, one search whose first character is a capital.

    Each lower-cased needle finds at least what its exact form finds, and a needle that contains
    another (``authorization``, ``auth``) is left to the shorter one, so together the gates are a
    superset of the per-rule triggers."""
    table: dict[int, tuple[list[str], bool]] = {}
    for rule in RULES:
        if rule.needles:
            table[_BIT[rule.name]] = (
                [re.escape(n.lower() if rule.lower else n) for n in rule.needles], rule.lower)
    table[_BIT["field"]] = ([_NAME], True)
    table[_BIT["openai"]] = ([r"sk-(?<![A-Za-z0-9_-]sk-)"], False)
    table[_BIT["url_cred"]] = ([r"://[^\s/?#@\"'<>]+@"], False)
    table[_DIGIT_BITS] = ([_IBAN_START], False)
    capitals = [n for rule in RULES if not rule.lower for n in rule.needles if "A" <= n[0] <= "Z"]
    needles = [(n.lower(), "") for rule in RULES for n in rule.needles if n not in capitals]
    for name in _NAME.split("|"):  # a word, then maybe a lookaround (``token(?!s)``)
        word = re.sub(r"[^a-z].*", "", name)
        needles.append((word, name[len(word):]))
    needles += [("sk-", r"(?<![\w-]sk-)"), ("://", r"[^\s/?#@\"'<>]+@")]
    plain = {n for n, after in needles if not after}
    gate = [_anchored(n, after) for n, after in dict.fromkeys(needles)
            if after or not any(other != n and other in n for other in plain)]
    exact = "[A-Z](?:" + "|".join(
        [f"(?<={re.escape(n[0])}){re.escape(n[1:])}" for n in capitals] + [_IBAN_START[5:]]) + ")"
    rules = tuple((bit, re.compile("|".join(b)), lower) for bit, (b, lower) in table.items())
    return re.compile(_by_first_char(gate)), re.compile(exact), rules


_COMMON = " \"etoi:sar0d21n,-pu5c34_7689fmlb.vhk/yzqgwx"
"""Characters by how often they occur in log lines, most common first (counted on the corpus of
``bench/sanitizer.py``); any other character is rarer still."""


def _anchored(needle: str, after: str = "") -> str:
    """``needle`` (a literal) then the regex ``after``, written to start at the needle's rarest
    character (:data:`_COMMON`) with a lookbehind for the characters before it: ``token`` ->
    ``k(?<=tok)en``. sre takes the set of the gate's first characters as a prefilter and skips
    every other position in C, so the rarer they are, the fewer positions it tries (~14 % of a
    log line instead of ~33 % when each needle starts at its first character)."""
    rank = [_COMMON.find(c) if c in _COMMON else len(_COMMON) for c in needle]
    i = rank.index(max(rank))
    behind = f"(?<={re.escape(needle[: i + 1])})" if i else ""
    return re.escape(needle[i]) + behind + re.escape(needle[i + 1:]) + after


def _by_first_char(alternatives: list[str]) -> str:
    r"""``a|b|…`` grouped by first character (``k(?:ey|(?<=tok)en)|p(?:ass|wd)``), each group
    starting with that character as a literal: sre then takes the set of first characters as a
    prefilter (a lookbehind first, ``(?i:…)`` or a character class would make it try every branch
    at every position, ~10x slower) and tries one group per candidate position. An escaped first
    character (``\[``) stays whole."""
    groups: dict[str, list[str]] = {}
    for alt in dict.fromkeys(alternatives):
        head = alt[:2] if alt.startswith("\\") else alt[:1]
        groups.setdefault(head, []).append(alt[len(head):])
    return "|".join(f"{head}(?:{'|'.join(rest)})" for head, rest in groups.items())


_GATE, _EXACT_GATE, _TRIGGERS = _triggers()
_DIGIT_RUN_TEMPLATE = (
    r"{d}(?<![{w}.@#/-]{d})(?<!{d}:{d})"
    r"(?=(?:[ ./()-]{{0,2}}{d}){{6,}}(?![{w}]))"
    r"(?!{d}{{3}}-{d}{{2}}-{d}{{2}}|{d}{{0,2}}(?:\.{d}{{1,3}}){{3}}(?![{dc}.])"
    r"|[0-9a-fA-F]{{7}}(?:-[0-9a-fA-F]{{4}}){{3}}-[0-9a-fA-F]{{12}}(?![{w}-]))"
)
r"""Where the ``digits`` rule could match: 7+ digits with phone punctuation between (after a ``+``
or ``(`` too), not starting inside a word or after ``hh:``, ending before a non-word character
(the rule's ``(?!\w)``), and not where the ``skip`` rule takes an ISO date, an IPv4 address or a
UUID whole. One search: the first digit is the class prefix sre skips to."""
_DIGIT_RUN = {
    False: re.compile(_DIGIT_RUN_TEMPLATE.format(d=r"\d", dc=r"\d", w=r"\w")),
    True: re.compile(_DIGIT_RUN_TEMPLATE.format(d="[0-9]", dc="0-9", w="0-9A-Za-z_")),
}
"""The digit-run trigger for any text, and (key ``True``) the same in ASCII classes for an ASCII
text, where it means the same and runs ~1.7x faster (sre tests ``[0-9]`` in a bitmap)."""


def _hits(text: str, lowered: str) -> Iterator[re.Match[str]]:
    """Every place in ``text`` (``lowered``: its lower-cased form, of the same length) where a
    trigger of :func:`_mask` occurs; none of the patterns crosses a line break, and a line break
    reads as the start or end of a line to their lookarounds."""
    yield from _GATE.finditer(lowered)
    yield from _EXACT_GATE.finditer(text)
    yield from _DIGIT_RUN[text.isascii()].finditer(text)


@lru_cache(maxsize=64)
def _literal_pattern(values: tuple[str, ...]) -> re.Pattern[str]:
    """One alternation of the literal ``values``, longest first."""
    return re.compile("|".join(re.escape(v) for v in sorted(values, key=len, reverse=True)))


def _mask(text: str) -> int:
    """Bits of the rules whose triggers occur in ``text`` (bit 0, existing tokens, alone means
    there is nothing to do): literal needles, the ``field`` rule's candidate names, ``AA00``
    (IBAN) and digit runs the ``digits`` rule could match."""
    mask = 0
    lowered = text.lower()
    if _GATE.search(lowered) or _EXACT_GATE.search(text):
        for bits, pattern, lower in _TRIGGERS:
            if pattern.search(lowered if lower else text):
                mask |= bits
    if _DIGIT_RUN[text.isascii()].search(text):
        mask |= _DIGIT_BITS
    return mask


_SEPARATOR = re.compile(r"[\"']?\s*[:=]\s*|\s+is\s*:\s*|\s+(?:is|[-\u2013\u2014])\s+",
                        re.IGNORECASE)
"""What stands between a field's name and its value in a match of the ``field`` rule."""


def _sanitize_digits_in(sanitizer: Sanitizer, m: re.Match[str]) -> str:
    """An IBAN-shaped match that fails mod-97 may still hold a card or phone number."""
    text = m.group()
    return text[:2] + sanitizer.sanitize(text[2:]) if text[2:].strip() else text


def _all_digits_in(text: str, spans: list[tuple[int, int, str]]) -> bool:
    """Whether every digit of ``text`` lies inside one of ``spans`` (``(start, end, _)``)."""
    rest = list(text)
    for start, end, _ in spans:
        rest[start:end] = " " * (end - start)
    return not any(c.isdigit() for c in rest)


def _same(m: re.Match[str]) -> str:
    return m.group()


@lru_cache(maxsize=512)
def _combined(mask: int) -> re.Pattern[str]:
    """The alternation of the rules whose bits are set in ``mask``, each in a named group.

    Inline flags are scoped to each alternative (``(?i:…)``) so one rule's flags do not leak.
    """
    parts = []
    for bit, rule in enumerate(RULES):
        if mask >> bit & 1:
            flags, body = _split_flags(rule.regex)
            parts.append(f"(?P<{rule.name}>(?{flags}:{body}))" if flags else
                         f"(?P<{rule.name}>{body})")
    return re.compile("|".join(parts), re.DOTALL)


def _split_flags(regex: str) -> tuple[str, str]:
    m = re.match(r"\(\?([aiLmsux]+)\)", regex)
    return (m.group(1), regex[m.end():]) if m else ("", regex)


def is_sensitive_name(name: object) -> bool:
    """Whether a field name marks its value as a secret: one of its words is in
    :data:`SENSITIVE_WORDS`, or its words run together contain one of :data:`SENSITIVE_PARTS`
    (``X-Api-Key``, ``db_password``, ``privateKey``, ``accessKeyId``, ``auth``, ``PWD``), and it
    is not a count such as ``input_tokens``."""
    return isinstance(name, str) and _sensitive(name)


@lru_cache(maxsize=4096)
def _sensitive(name: str) -> bool:
    if _NOT_SENSITIVE.search(name):
        return False
    words = [w.lower() for w in _WORD.findall(name)]
    joined = "".join(words)
    return any(w in SENSITIVE_WORDS for w in words) or any(p in joined for p in SENSITIVE_PARTS)


def card_valid(digits: str) -> bool:
    """13–19 digits, a card-network prefix (2, 3, 4, 5, 6) and a valid Luhn check digit
    (ISO/IEC 7812-1 Annex B)."""
    if not 13 <= len(digits) <= 19 or digits[0] not in "23456":
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616: 15–34 characters, two letters, two check digits, and ``int(rearranged) % 97 == 1``
    where letters count as 10–35 (ISO 7064 MOD 97-10)."""
    if not 15 <= len(iban) <= 34 or not iban[:2].isalpha() or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


_default = Sanitizer()


def configure(key: bytes | None = None, phone_regions: Iterable[str] = ("US", "GB")) -> Sanitizer:
    """Replace the process-wide sanitizer (the correlation key and phone regions) and return it;
    the secrets the previous one held stay held."""
    global _default
    _default = Sanitizer(key, phone_regions, held=_default.held)
    return _default


def configure_from_settings(settings: Settings) -> Sanitizer:
    """:func:`configure` from ``OPSGATE_REDACTION_KEY`` (its UTF-8 bytes; random when unset) and
    ``OPSGATE_REDACTION_PHONE_REGIONS``; ``ValueError`` names unknown region codes. Every secret
    of ``settings`` (:func:`settings_secrets`) is held (:func:`hold_secret`)."""
    key = settings.redaction_key.get_secret_value().encode() if settings.redaction_key else None
    sanitizer = configure(key, settings.redaction_phone_regions)
    for value in settings_secrets(settings):
        sanitizer.hold(value)
    return sanitizer


def settings_secrets(settings: Settings) -> Iterator[str]:
    """Every secret value ``settings`` holds or points to, found by the shape of each field rather
    than a list of names, so a new setting of one of these shapes is held without further code:

    * each ``SecretStr`` field (provider keys, JWT, IdP and master keys, webhook URLs, bot, SMS,
      PagerDuty and SMTP credentials, the redaction key);
    * the password of each URL-valued field with one (``database_url``, ``redis_url``,
      ``redis://:pw@host`` too; RFC 3986 §3.2.1 userinfo), the named endpoints' base URLs included;
    * the content of each file a sensitively named ``Path`` field names (``jwt_secret_file``,
      ``master_key_file``, ``ledger_signing_key_file``, ``metrics_token_file``;
      :func:`is_sensitive_name`), when it exists and can be read; a key file created later is
      held by the code that reads it;
    * each named endpoint's key (``[providers.<name>] api_key_env``, :meth:`ProviderConfig.api_key`).

    tests/security/test_held_secrets.py refuses a sensitively named setting typed ``str``."""
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            yield value.get_secret_value()
        elif isinstance(value, str):
            yield from _url_password(value)
        elif isinstance(value, Path) and is_sensitive_name(name):
            yield from _file_secret(value)
    for provider in settings.providers.values():
        yield from _url_password(provider.base_url)
        if (key := provider.api_key()) is not None:
            yield key


def _url_password(value: str) -> Iterator[str]:
    """The password of ``value`` when it is a URL with one (``scheme://user:<password>@host``)."""
    if "://" in value and "@" in value:
        try:
            password = urlsplit(value).password
        except ValueError:  # not a URL after all (a bad port, an unclosed bracket)
            return
        if password:
            yield unquote(password)
            if unquote(password) != password:
                yield password


def _file_secret(path: Path) -> Iterator[str]:
    """The stripped content of the key file ``path``, when it exists and reads as text."""
    try:
        content = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return
    if content:
        yield content


def held_secrets() -> tuple[str, ...]:
    """The secret values the process-wide sanitizer replaces literally (:func:`hold_secret`)."""
    return _default.held


def hold_secret(value: str) -> str:
    """Redact ``value`` literally in everything the process-wide sanitizer sees from now on
    (:meth:`Sanitizer.hold`), and return it: code that reads a secret outside the settings
    (a key file, a Connect token, a secret-store value) writes ``key = hold_secret(read())``."""
    _default.hold(value)
    return value


def sanitize(text: str) -> str:
    """The process-wide :meth:`Sanitizer.sanitize`."""
    return _default.sanitize(text)


@overload
def sanitize_obj(obj: str) -> str: ...
@overload
def sanitize_obj(obj: Mapping[str, object]) -> dict[str, object]: ...
@overload
def sanitize_obj(obj: object) -> object: ...
def sanitize_obj(obj: object) -> object:
    """The process-wide :meth:`Sanitizer.sanitize_obj` (a str stays a str, a dict a dict)."""
    return _default.sanitize_obj(obj)
