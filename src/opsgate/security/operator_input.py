"""Operator input that is stored or ledgered: free text redacted, identifiers refused, never altered.

The ledger is append-only: a secret written into an entry (a rollback reason quoting an API key)
can never be removed from it, and the rollout tables and history hand it back on every read. So
what an operator types is made safe *before* it is stored or ledgered, with the one sanitizer
every other sink uses (:func:`opsgate.security.sanitizer.sanitize`):

* :data:`OperatorText` (rollout and toggle reasons, incident notes): control characters other than
  tab and newline are refused (:class:`ValueError`, a 422 through pydantic); the text is then
  stored as the sanitizer returns it, secrets and personal data as ``[REDACTED:<kind>:<hash>]``.
  :data:`RequiredText` (a rollback reason, a resolution note) is also refused when blank.
* :data:`Identifier` (names that other rows and calls are matched on, e.g. a toggle's
  ``group_id``, a budget's ``user_id``): refused when blank, when it holds any control character
  or when the sanitizer finds a secret in it (an API key, a token, a credential). An identifier is
  never silently altered, since the altered one would name something else. Personal-data shapes
  are allowed (:data:`PERSONAL_KINDS`): an e-mail address or a numeric IdP ``sub`` is a user id
  a budget must be able to name. A user id itself follows this rule too
  (:func:`opsgate.security.users.check_user_id`), so every user can be named by a budget.

:func:`check_identifier` and :func:`operator_text` are the same rules for callers outside pydantic
(:func:`opsgate.metering.budgets.check_budget`, used by the CLI and the API).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

from pydantic import AfterValidator

from opsgate.errors import InvalidInput
from opsgate.security.sanitizer import sanitize

PERSONAL_KINDS = frozenset({"email", "phone", "card", "iban"})
"""Redaction kinds that are personal data, not secrets: an identifier may have their shape."""
_REDACTED_KIND = re.compile(r"\[REDACTED:([a-z_]+):")

TEXT_WHITESPACE = frozenset("\t\n")
"""The control characters free text may hold (a note may have lines); every other one (NUL, CR,
ESC, DEL, C1, ...: Unicode category ``Cc``) is refused."""


def _has_control(value: str, allowed: frozenset[str] = frozenset()) -> bool:
    return any(unicodedata.category(c) == "Cc" and c not in allowed for c in value)


def _text(value: str) -> str:
    if _has_control(value, TEXT_WHITESPACE):
        raise ValueError("must not contain control characters (only tab and newline are allowed)")
    return sanitize(value)


def _required_text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return _text(value)


def _identifier(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    if _has_control(value):
        raise ValueError("must not contain control characters")
    if set(_REDACTED_KIND.findall(sanitize(value))) - PERSONAL_KINDS:
        raise ValueError("must not look like a secret (it would be redacted)")
    return value


REASON_MAX_CHARS = 500
"""The longest toggle or rollout reason accepted, by the admin API and the CLI alike."""

OperatorText = Annotated[str, AfterValidator(_text)]
"""Operator free text, redacted before it is stored or ledgered; control characters refused."""

RequiredText = Annotated[str, AfterValidator(_required_text)]
""":data:`OperatorText` that must say something: refused when blank (a rollback reason, an
incident's resolution note: the ledger must say why)."""

Identifier = Annotated[str, AfterValidator(_identifier)]
"""An identifier stored as sent: refused when blank, with control characters, or secret-shaped."""


def operator_text(name: str, value: str, *, required: bool = False, max_length: int | None = None) -> str:
    """:data:`OperatorText`'s rule outside pydantic (:data:`RequiredText`'s with ``required``):
    ``value`` redacted; :class:`InvalidInput` naming ``name`` (never the value) for control
    characters, for blank text when ``required``, or for more than ``max_length`` characters
    (the API field's ``max_length``, e.g. :data:`REASON_MAX_CHARS`)."""
    if max_length is not None and len(value) > max_length:
        raise InvalidInput(f"{name} must be at most {max_length} characters (got {len(value)})")
    try:
        return (_required_text if required else _text)(value)
    except ValueError as exc:
        raise InvalidInput(f"{name} {exc}") from None


def check_identifier(name: str, value: str) -> None:
    """:data:`Identifier`'s rule outside pydantic: :class:`InvalidInput` naming ``name`` (never
    the value) when ``value`` is blank, holds a control character or is secret-shaped."""
    try:
        _identifier(value)
    except ValueError as exc:
        raise InvalidInput(f"{name} {exc}") from None
