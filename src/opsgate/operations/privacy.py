"""What leaves the machine: the pipeline's minimisation step between validate and reserve.

:meth:`PrivacyPolicy.minimise` takes an operation's prepared :class:`CompletionRequest` and returns
the request that is really sent, plus the call's :class:`CallPrivacy`:

- every secret the sanitizer's rules find in the prompt becomes a typed placeholder
  (:mod:`opsgate.security.masking`), for every operation, always;
- for the operations configured in ``privacy_pseudonymise`` (default: the email and calendar
  operations) email addresses, display names and phone numbers become per-call pseudonyms
  (:mod:`opsgate.security.pseudonyms`).

The model's answer goes through :meth:`CallPrivacy.restore` before it is validated, so a reply
draft names real people; placeholders of secrets are never mapped back. The ledger's intent entry
gets :meth:`CallPrivacy.ledger_counts` (how many of each kind, never values); the API response gets
:meth:`CallPrivacy.report` (the same counts plus pseudonyms the model invented or mangled).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from opsgate.config import DEFAULT_PSEUDONYMISED, Settings
from opsgate.providers.base import CompletionRequest
from opsgate.security.masking import SecretMasker
from opsgate.security.pseudonyms import Pseudonymiser


class CallPrivacy:
    """The minimisation of one call: counts, and the pseudonym mapping while the call runs.

    Holds the mapping only in memory; its ``repr`` shows counts, never values.
    """

    def __init__(self, masker: SecretMasker, pseudonyms: Pseudonymiser | None) -> None:
        self._masker = masker
        self._pseudonyms = pseudonyms

    def restore(self, data: object) -> object:
        """The model's decoded JSON answer with this call's pseudonyms mapped back (unchanged
        when the operation is not pseudonymised)."""
        return data if self._pseudonyms is None else self._pseudonyms.restore(data)

    def ledger_counts(self) -> dict[str, dict[str, int]]:
        """``{"masked": {"api_key": 1, ...}, "pseudonymised": {"email": 2, ...}}``, kinds with a
        count above zero only: what the intent entry records."""
        masked = {kind.lower(): n for kind, n in sorted(self._masker.counts.items())}
        people = self._pseudonyms.counts if self._pseudonyms is not None else {}
        return {"masked": masked, "pseudonymised": {k: n for k, n in people.items() if n}}

    def report(self) -> dict[str, Any]:
        """:meth:`ledger_counts` plus ``unresolved_pseudonyms``: pseudonym-like strings in the
        answer that this call did not hand out, left as they are (never guessed)."""
        unresolved = list(self._pseudonyms.unresolved) if self._pseudonyms is not None else []
        return {**self.ledger_counts(), "unresolved_pseudonyms": unresolved}

    def __repr__(self) -> str:
        return f"CallPrivacy({self.ledger_counts()})"


AS_IS_MAX = 256
"""System prompts a policy remembers as having nothing to minimise (the oldest is forgotten first)."""


@dataclass(frozen=True, slots=True)
class PrivacyPolicy:
    """Which operations are pseudonymised, and the regions phone numbers are read in
    (ISO 3166-1 alpha-2). Secrets are masked for every operation.

    ``as_is`` remembers the system prompts minimisation left unchanged (see :meth:`minimise`)."""

    pseudonymised: frozenset[str] = frozenset(DEFAULT_PSEUDONYMISED)
    phone_regions: tuple[str, ...] = ("US", "GB")
    as_is: dict[tuple[str, tuple[str, ...], bool], None] = field(
        default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> PrivacyPolicy:
        """From ``privacy_pseudonymise`` and ``redaction_phone_regions``; ``ValueError`` names
        unknown operation ids."""
        return cls.of(settings.privacy_pseudonymise, settings.redaction_phone_regions)

    @classmethod
    def of(cls, operations: Iterable[str], phone_regions: Iterable[str]) -> PrivacyPolicy:
        """A policy pseudonymising ``operations``; ``ValueError`` names unknown operation ids."""
        from opsgate.operations import OPERATIONS

        chosen = frozenset(operations)
        unknown = sorted(chosen - set(OPERATIONS))
        if unknown:
            raise ValueError(f"privacy_pseudonymise names unknown operations: {', '.join(unknown)}")
        return cls(chosen, tuple(r.upper() for r in phone_regions))

    def minimise(
        self, operation: str, request: CompletionRequest, people: Iterable[tuple[str, str]] = ()
    ) -> tuple[CompletionRequest, CallPrivacy]:
        """The request really sent for ``operation`` (system and user text minimised) and the
        call's :class:`CallPrivacy`. Secrets are masked first, so a key that contains an ``@`` or
        digits is never taken for an address or a phone number. ``people`` are the ``(display
        name, address)`` pairs the operation's parser found (:attr:`opsgate.operations.base.Prepared.people`): their names
        are pseudonymised wherever they occur, next to an address or not.

        The system prompt is the operation's rendered prompt, the same text for most calls, and
        searching it was most of this step's time (~1 ms of ~1 ms for email-compose, issue 21):
        a system prompt that minimisation left unchanged, finding nothing, is remembered (with
        the held secrets it was searched for and whether people were pseudonymised) and sent
        as it is next time. That is exact: the same text meets the same rules, and a text with
        no finds leaves no placeholder or pseudonym behind for the user text. Only such texts
        are remembered, never one that held a secret or personal data, and none is sent as it is
        when a name of this call's ``people`` occurs in it."""
        masker = SecretMasker()
        pseudonyms = (Pseudonymiser(self.phone_regions, people)
                      if operation in self.pseudonymised else None)
        if pseudonyms is not None:  # input text shaped like a pseudonym keeps its number
            pseudonyms.reserve(request.system, request.user)

        def minimised(text: str) -> str:
            text = masker.mask(text)
            return pseudonyms.pseudonymise(text) if pseudonyms is not None else text

        key = (request.system, masker.held, pseudonyms is not None)
        known_in_system = pseudonyms is not None and pseudonyms.mentions_known(request.system)
        if key in self.as_is and not known_in_system:
            system = request.system
        else:
            system = minimised(request.system)
            if system == request.system and not _found(masker, pseudonyms):
                self._remember(key)
        sent = replace(request, system=system, user=minimised(request.user))
        return sent, CallPrivacy(masker, pseudonyms)

    def _remember(self, key: tuple[str, tuple[str, ...], bool]) -> None:
        if len(self.as_is) >= AS_IS_MAX:
            self.as_is.pop(next(iter(self.as_is)), None)
        self.as_is[key] = None


def _found(masker: SecretMasker, pseudonyms: Pseudonymiser | None) -> bool:
    """Whether the call's masker or pseudonymiser has replaced anything yet."""
    return bool(masker.counts) or (pseudonyms is not None and any(pseudonyms.counts.values()))
