"""Secrets in a prompt become typed placeholders before any provider sees it.

:class:`SecretMasker` runs the sanitizer's rules (:mod:`opsgate.security.sanitizer`) over the text
of one call's prompt, but replaces each secret with a typed placeholder numbered per call
(``[API_KEY_1]``, ``[PASSWORD_1]``, ``[PRIVATE_KEY_1]``) instead of a redaction token. The same
value gets the same placeholder everywhere in the call. Nothing maps placeholders back: the model
never needs a secret, so an answer that refers to one shows its placeholder.

Email addresses and phone numbers are left alone here: they are personal data, pseudonymised (and
restored) by :mod:`opsgate.security.pseudonyms` when the operation's configuration says so.

Every secret the process-wide sanitizer holds (:func:`opsgate.security.sanitizer.held_secrets`:
the settings' secrets and every secret-store value read) is masked literally too, whatever its
shape, by the sanitizer's own literal matching (kind ``secret`` -> ``SECRET``).

Placeholder kinds (sanitizer kind -> placeholder):

================================ =================
anthropic, openai, google,        ``API_KEY``
stripe, sendgrid, twilio
github, gitlab, slack, webhook,   ``TOKEN``
huggingface, npm, bearer, param
aws (access key id)               ``AWS_ACCESS_KEY``
jwt                               ``JWT``
pem                               ``PRIVATE_KEY``
basic, url_cred                   ``CREDENTIAL``
card                              ``CARD_NUMBER``
iban                              ``IBAN``
ssn                               ``SSN``
secret (a held value),            ``SECRET``
aws_secret (a secret access key)
field (by the field's name)       ``PASSWORD``, ``API_KEY``, ``AWS_ACCESS_KEY``, ``TOKEN``,
                                  ``CREDENTIAL`` or ``SECRET``
================================ =================
"""

from __future__ import annotations

import re
from collections import Counter

from opsgate.security.sanitizer import Sanitizer, held_secrets

KIND_PLACEHOLDERS = {
    "anthropic": "API_KEY", "openai": "API_KEY", "google": "API_KEY",
    "stripe": "API_KEY", "sendgrid": "API_KEY", "twilio": "API_KEY",
    "github": "TOKEN", "slack": "TOKEN", "bearer": "TOKEN", "param": "TOKEN", "webhook": "TOKEN",
    "gitlab": "TOKEN", "huggingface": "TOKEN", "npm": "TOKEN",
    "aws": "AWS_ACCESS_KEY", "jwt": "JWT", "pem": "PRIVATE_KEY",
    "basic": "CREDENTIAL", "url_cred": "CREDENTIAL", "card": "CARD_NUMBER", "iban": "IBAN",
    "ssn": "SSN",
}  # fmt: skip
"""The placeholder kind of each sanitizer kind (``field`` is decided by the field's name; any
other kind, such as a held value's, is ``SECRET``)."""

_FIELD_PLACEHOLDERS = (
    (re.compile(r"pass(?:word|wd|phrase|code|wort|ord|e)?(?![a-z])|pwd|\bpw\b|\bpin\b|kennwort"
                r"|wachtwoord|senha|contrase"), "PASSWORD"),
    (re.compile(r"api[_-]?key"), "API_KEY"),
    (re.compile(r"access[_-]?key[_-]?id"), "AWS_ACCESS_KEY"),
    (re.compile(r"token|session[_-]?id|cookie|jwt|bearer|otp"), "TOKEN"),
    (re.compile(r"auth|cred"), "CREDENTIAL"),
)
"""The placeholder kind of a sensitive field by its name (first match); any other is ``SECRET``."""


class SecretMasker(Sanitizer):
    """Masks the secrets of one call; keep one instance per call and drop it afterwards. It holds
    the secrets the process-wide sanitizer held when it was made.

    :meth:`mask` returns the text with placeholders; :attr:`counts` says how many distinct
    secrets of each placeholder kind were masked (``{"API_KEY": 2, "PASSWORD": 1}``), never which.
    """

    def __init__(self) -> None:
        super().__init__(key=b"unused: placeholders are numbered, not hashed", held=held_secrets())
        self._placeholders: dict[tuple[str, str], str] = {}
        self.counts: Counter[str] = Counter()

    def mask(self, text: str) -> str:
        """``text`` with every secret the sanitizer's rules find replaced by its placeholder."""
        return self.sanitize(text)

    def token(self, kind: str, value: str) -> str:
        """The placeholder of ``value`` (a secret of sanitizer kind ``kind``)."""
        return self._placeholder(KIND_PLACEHOLDERS.get(kind, "SECRET"), value)

    def field_token(self, name: str, value: str) -> str:
        """The placeholder of the value of the sensitive field ``name``."""
        lowered = name.lower()
        kind = next((k for pattern, k in _FIELD_PLACEHOLDERS if pattern.search(lowered)), "SECRET")
        return self._placeholder(kind, value)

    def _placeholder(self, kind: str, value: str) -> str:
        key = (kind, value)
        if key not in self._placeholders:
            self.counts[kind] += 1
            self._placeholders[key] = f"[{kind}_{self.counts[kind]}]"
        return self._placeholders[key]

    def _email(self, m: re.Match[str]) -> str:
        return m.group()  # personal data: see opsgate.security.pseudonyms

    def _phones(self, text: str) -> str:
        return text  # personal data: see opsgate.security.pseudonyms

    def __repr__(self) -> str:
        return f"SecretMasker(counts={dict(self.counts)})"
