"""The contract every AI operation fulfils.

An operation turns a validated ``Input`` into a :class:`Prepared` (the prompt, the JSON schema the
model must answer with, and anything computed locally in code), then merges the model's validated
``ModelOutput`` with that local work into the ``Output`` the API returns::

    data = op.Input.model_validate(body)          # 422 on failure
    prepared = op.prepare(data, prompt)           # may raise InvalidInput (422)
    completion = await router.complete(prepared.request, ...)
    answer = op.ModelOutput.model_validate(completion.data)
    result = op.finish(prepared, answer)          # an op.Output instance
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

from opsgate.operations.prompts import PromptVersion, package_prompt
from opsgate.providers.base import CompletionRequest


@dataclass(frozen=True, slots=True)
class Sent:
    """One thing an operation puts in its prompt (for the privacy manifest, docs/privacy.md):
    ``what`` names input fields or values computed from them; ``clip`` is the most characters of
    it sent (``None``: sent whole, within the input schema's limits)."""

    what: str
    clip: int | None = None


@dataclass(frozen=True)
class Prepared:
    """A ready-to-send request plus what the operation computed locally (``context``)."""

    request: CompletionRequest
    context: dict[str, Any] = field(default_factory=dict)


class Operation:
    """Base class of the nine operations. Subclasses set the class attributes and both methods.

    ``id`` is the public operation id (e.g. ``email-classify``); ``Input``, ``ModelOutput`` and
    ``Output`` are pydantic models; ``max_tokens`` caps the model's answer; ``sends`` lists what
    ``prepare`` puts in the prompt, and nothing else may reach it; ``prompt_fields`` names the
    ``${name}`` placeholders a prompt version of the operation may use
    (:mod:`opsgate.operations.prompts`).
    """

    id: ClassVar[str]
    Input: ClassVar[type[BaseModel]]
    ModelOutput: ClassVar[type[BaseModel]]
    Output: ClassVar[type[BaseModel]]
    max_tokens: ClassVar[int] = 1024
    sends: ClassVar[tuple[Sent, ...]] = ()
    prompt_fields: ClassVar[frozenset[str]] = frozenset()

    def prepare(self, data: BaseModel, prompt: PromptVersion | None = None) -> Prepared:
        """Build the provider request for validated input ``data`` with the system prompt of
        ``prompt`` (default: the package's :data:`~opsgate.operations.prompts.DEFAULT_VERSION`)."""
        raise NotImplementedError

    def system_prompt(self, prompt: PromptVersion | None, **fields: object) -> str:
        """``prompt`` (default: the package's default version) rendered with ``fields``."""
        return (prompt or package_prompt(self.id)).render(fields)

    def finish(self, prepared: Prepared, answer: BaseModel) -> BaseModel:
        """Merge the model's validated ``answer`` with ``prepared.context`` into an ``Output``."""
        raise NotImplementedError
