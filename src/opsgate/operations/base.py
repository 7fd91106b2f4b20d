"""The contract every AI operation fulfils.

An operation turns a validated ``Input`` into a :class:`Prepared` (the prompt, the JSON schema the
model must answer with, and anything computed locally in code), then merges the model's validated
``ModelOutput`` with that local work into the ``Output`` the API returns::

    data = op.Input.model_validate(body)          # 422 on failure
    prepared = prepare_input(op, data, prompt)    # any failure of op.prepare is a 422
    completion = await router.complete(prepared.request, ...)
    answer = op.answer_model(prepared).model_validate(completion.data)
    result = op.finish(prepared, answer)          # an op.Output instance
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from opsgate.errors import InvalidInput, OpsgateError
from opsgate.operations.prompts import PromptVersion, package_prompt
from opsgate.providers.base import CompletionRequest
from opsgate.validation import field_errors, schema_names

log = logging.getLogger("opsgate.operations")

OFF_LOOP_BYTES = 64 * 1024
"""The body size from which an operation's input is validated and prepared off the event loop
(:attr:`Operation.off_loop_bytes`). Below it, preparing costs about what the smallest body's does
(email-classify on this project's machine, 2026-12-05: 9.3 ms at 3 KB, 10.1 ms at 50 KB, 24 ms at
194 KB) and the thread hop it would add (about 0.2 ms) is not paid; from it, parsing grows with
the body (a 1.9 MB CSV took 2.9 s) and would hold every other request."""


@dataclass(frozen=True, slots=True)
class Sent:
    """One thing an operation puts in its prompt (for the privacy manifest, docs/privacy.md):
    ``what`` names input fields or values computed from them; ``clip`` is the most characters of
    it sent (``None``: sent whole, within the input schema's limits)."""

    what: str
    clip: int | None = None


@dataclass(frozen=True)
class Prepared:
    """A ready-to-send request plus what the operation computed locally (``context``).
    ``answer_model``, when set, is the model the answer is validated against instead of the
    operation's ``ModelOutput`` (a subclass with tighter limits the input chose, such as a
    draft's ``length``); ``request.json_schema`` is its schema. ``people`` are the ``(display
    name, address)`` pairs the input's parser found (email headers, calendar organizers and
    attendees), whose names the minimise step pseudonymises wherever they occur in the prompt
    (:mod:`opsgate.security.pseudonyms`)."""

    request: CompletionRequest
    context: dict[str, Any] = field(default_factory=dict)
    answer_model: type[BaseModel] | None = None
    people: tuple[tuple[str, str], ...] = ()


class Operation:
    """Base class of the nine operations. Subclasses set the class attributes and both methods.

    ``id`` is the public operation id (e.g. ``email-classify``); ``Input``, ``ModelOutput`` and
    ``Output`` are pydantic models (each request's ``max_tokens`` is computed from ``ModelOutput``'s
    schema and the input, :mod:`opsgate.operations.caps`); ``sends`` lists what
    ``prepare`` puts in the prompt, and nothing else may reach it; ``prompt_fields`` names the
    ``${name}`` placeholders a prompt version of the operation may use
    (:mod:`opsgate.operations.prompts`); ``reads`` names the input fields whose content
    ``prepare`` parses (a raw message, a calendar, a CSV), which :func:`prepare_input` names when
    preparing fails in a way ``prepare`` did not anticipate; ``off_loop_bytes`` is the body size
    from which the gateway validates and prepares a request in a worker thread rather than on the
    event loop (:meth:`opsgate.pipeline.Gateway.prepare`): :data:`OFF_LOOP_BYTES` by default, 0
    for an operation whose work a small body can make long (a calendar's recurrence rules).
    """

    id: ClassVar[str]
    Input: ClassVar[type[BaseModel]]
    ModelOutput: ClassVar[type[BaseModel]]
    Output: ClassVar[type[BaseModel]]
    sends: ClassVar[tuple[Sent, ...]] = ()
    prompt_fields: ClassVar[frozenset[str]] = frozenset()
    reads: ClassVar[tuple[str, ...]] = ()
    off_loop_bytes: ClassVar[int] = OFF_LOOP_BYTES

    def prepare(self, data: BaseModel, prompt: PromptVersion | None = None) -> Prepared:
        """Build the provider request for validated input ``data`` with the system prompt of
        ``prompt`` (default: the package's :func:`~opsgate.operations.prompts.default_version`)."""
        raise NotImplementedError

    def system_prompt(self, prompt: PromptVersion | None, **fields: object) -> str:
        """``prompt`` (default: the package's default version) rendered with ``fields``."""
        return (prompt or package_prompt(self.id)).render(fields)

    def finish(self, prepared: Prepared, answer: BaseModel) -> BaseModel:
        """Merge the model's validated ``answer`` with ``prepared.context`` into an ``Output``."""
        raise NotImplementedError

    def answer_model(self, prepared: Prepared) -> type[BaseModel]:
        """The model ``prepared``'s answer must match: its ``answer_model``, else ``ModelOutput``."""
        return prepared.answer_model or self.ModelOutput


def prepare_input(op: Operation, data: BaseModel, prompt: PromptVersion | None = None) -> Prepared:
    """``op.prepare(data, prompt)``, where every failure is a 422 naming the field.

    An :class:`~opsgate.errors.InvalidInput` passes as raised (it names its field), as does any
    other :class:`~opsgate.errors.OpsgateError`. Anything else — a value read out of the input
    that breaks a limit of the operation's own models (an attachment name over 255 characters in
    a raw message), or a parser failing on input it does not expect — becomes an
    :class:`InvalidInput` whose errors name the given fields of ``op.reads`` (``body`` when none
    is given) with the rule that failed (pydantic's message, through
    :func:`opsgate.validation.field_errors`) or the exception's type, never a submitted value.
    The failure is logged (WARNING, with its traceback, through the sanitizer) so an
    unanticipated one is seen and fixed."""
    try:
        return op.prepare(data, prompt)
    except OpsgateError:
        raise
    except Exception as exc:
        log.warning("%s: preparing the input failed (%s)", op.id, type(exc).__name__, exc_info=True)
        fields = [name for name in op.reads if getattr(data, name, None) is not None] or ["body"]
        if isinstance(exc, ValidationError):
            names = schema_names(op.Input, op.ModelOutput, op.Output)
            rules = [f"{e['loc']}: {e['msg']}" for e in field_errors(exc.errors(include_url=False), names)]
        else:
            rules = [f"could not be read ({type(exc).__name__})"]
        errors = [{"loc": name, "msg": rule} for name in fields for rule in rules]
        raise InvalidInput(f"The {', '.join(fields)} field could not be prepared for the model: "
                           + "; ".join(rules), errors=errors) from None
