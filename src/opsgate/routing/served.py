"""Which model served a call, and the alert events about models: substitutions and retirements.

Providers report the model that answered (OpenAI-compatible and Anthropic ``model``, Gemini
``modelVersion``). A dated snapshot of the requested model (``claude-opus-5-20260724``,
``gemini-3.8-flash-001``) is the same model; anything else is a *substitution* (an alias moved,
or a retired model rerouted by the provider), which :class:`ModelWatch` reports once per episode
as ``model_substituted`` (P3). A target answering ``model_unavailable`` (retired or unknown model)
is reported once per episode as ``model_unavailable`` (P2). An episode ends when the same
(operation, provider, model) is served by the requested model again.

The reported string is the provider's text, so the router checks it before anything records it
(:func:`checked_served_model`): a model id is a short token (``claude-opus-5-20260724``,
``models/gemini-3.8-flash-001``, ``meta-llama/Llama-3.1-8B-Instruct``, ``llama3.1:8b``,
``claude-3-5-sonnet@20240620``) that the sanitizer leaves as it is; any other text is recorded as
:data:`INVALID_SERVED_MODEL`, so the attempt row, the log row, the ledger's result entry and the
``model_substituted`` signal never hold it. That is a substitution (no requested model is called
so), priced at the dearest price on the chain and flagged ``served_model_unpriced``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from opsgate.providers.base import Completion, normalise_model
from opsgate.security.sanitizer import sanitize

log = logging.getLogger("opsgate.routing")

MODEL_SUBSTITUTED = "model_substituted"
MODEL_UNAVAILABLE = "model_unavailable"
SEVERITY = {MODEL_SUBSTITUTED: "P3", MODEL_UNAVAILABLE: "P2"}

MAX_MODEL_ID = 128
"""The longest served-model string recorded (the width of the ``served_model`` columns)."""
INVALID_SERVED_MODEL = "<invalid>"
"""Recorded instead of a served-model string that is no model id (never a provider's model id:
``<`` and ``>`` are outside :data:`_MODEL_ID`)."""
_MODEL_ID = re.compile(rf"[A-Za-z0-9._:/@+-]{{1,{MAX_MODEL_ID}}}")


def checked_served_model(completion: Completion) -> Completion:
    """``completion`` with its ``served_model`` checked by :func:`checked_model_id`."""
    served = checked_model_id(completion.provider, completion.model, completion.served_model)
    return completion if served == completion.served_model else replace(completion, served_model=served)


def checked_model_id(provider: str, model: str, served: str | None) -> str | None:
    """``served`` (what ``provider`` reported answered a request for ``model``, a completion's
    or an unusable answer's) when it is ``None`` or a model id -- at most
    :data:`MAX_MODEL_ID` of ``A-Z a-z 0-9 . _ : / @ + -`` that :func:`~opsgate.security.sanitizer.sanitize`
    leaves unchanged (no key, e-mail address or phone number) -- else :data:`INVALID_SERVED_MODEL`
    (logged with the provider, the requested model and the text's length, never the text)."""
    if served is None or (_MODEL_ID.fullmatch(served) and sanitize(served) == served):
        return served
    log.warning("%s/%s reported a served model that is no model id (%d characters): recorded as %s",
                provider, model, len(served), INVALID_SERVED_MODEL)
    return INVALID_SERVED_MODEL


def substituted(requested: str, served: str | None) -> bool:
    """Whether ``served`` is another model than ``requested`` (``None``: the provider did not
    say, so it is taken as the requested model)."""
    return served is not None and normalise_model(served) != normalise_model(requested)


@dataclass(frozen=True, slots=True)
class ModelEvent:
    """An alert event: ``kind`` (:data:`MODEL_SUBSTITUTED` or :data:`MODEL_UNAVAILABLE`), its
    ``severity``, the operation, provider and requested model, and the served model (for a
    substitution)."""

    kind: str
    severity: str
    operation: str
    provider: str
    model: str
    served_model: str | None = None

    @property
    def subject(self) -> str:
        """``"<operation> <provider>/<model>"``, the alert group."""
        return f"{self.operation} {self.provider}/{self.model}"

    @property
    def detail(self) -> str:
        """One line for the incident timeline."""
        if self.kind == MODEL_SUBSTITUTED:
            return (f"{self.operation}: asked {self.provider} for {self.model}, "
                    f"served by {self.served_model}")
        return f"{self.operation}: {self.provider} no longer serves {self.model} (fell back)"


@dataclass
class ModelWatch:
    """Tracks open episodes per (kind, operation, provider, model) and publishes a
    :class:`ModelEvent` to every ``listeners`` entry when one opens. In-process and event-loop
    confined (no awaits), like the router."""

    listeners: list[Callable[[ModelEvent], None]] = field(default_factory=list)
    _open: set[tuple[str, str, str, str]] = field(default_factory=set)

    def completed(self, operation: str, completion: Completion) -> None:
        """A call of ``operation`` was answered by ``completion``: open or close the
        substitution episode of its target."""
        key = (MODEL_SUBSTITUTED, operation, completion.provider, completion.model)
        if substituted(completion.model, completion.served_model):
            self._event(key, completion.served_model)
        else:
            self._open.discard(key)
            self._open.discard((MODEL_UNAVAILABLE, *key[1:]))

    def unavailable(self, operation: str, targets: Iterable[tuple[str, str]]) -> None:
        """``targets`` ((provider, model) pairs) answered ``model_unavailable`` for ``operation``."""
        for provider, model in targets:
            self._event((MODEL_UNAVAILABLE, operation, provider, model), None)

    def _event(self, key: tuple[str, str, str, str], served: str | None) -> None:
        if key in self._open:
            return
        self._open.add(key)
        kind, operation, provider, model = key
        event = ModelEvent(kind, SEVERITY[kind], operation, provider, model, served)
        for listener in self.listeners:
            listener(event)
