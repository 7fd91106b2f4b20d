"""The one repair request a model gets when its answer does not match the operation's schema.

The pipeline's route step (step 7) validates the model's JSON answer against ``op.ModelOutput``
(or the tighter answer model the input chose, ``Operation.answer_model``);
on a miss it sends :func:`repair_request` once and, on a second miss, raises
:class:`~opsgate.operations.errors.InvalidModelOutput` (502). The note quotes where the answer broke
the schema (pydantic's ``loc`` and ``msg``, at most 20 errors), never the answer's values.
"""

from __future__ import annotations

from dataclasses import replace

from pydantic import ValidationError

from opsgate.providers.base import CompletionRequest

MAX_QUOTED_ERRORS = 20


def repair_request(original: CompletionRequest, exc: ValidationError) -> CompletionRequest:
    """``original`` with a note appended to its user prompt listing where the previous answer
    broke the schema (``loc: msg``; submitted values are not quoted)."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'answer'}: {e['msg']}"
        for e in exc.errors(include_input=False, include_url=False)[:MAX_QUOTED_ERRORS]
    )
    note = (
        "\n\nYour previous answer did not match the required JSON schema "
        f"({problems}). Answer again with one JSON object that matches the schema exactly."
    )
    return replace(original, user=original.user + note)
