"""Validation failures as :class:`~opsgate.errors.InvalidInput`: fields and rules, never values.

Every 422 the gateway sends goes through :func:`field_errors`, whether pydantic refused an
operation's input (the pipeline), a route's body (:mod:`opsgate.deps`) or FastAPI refused a path
or query parameter (the app's one ``RequestValidationError`` handler). Each error is
``{"loc": "a.b.0", "msg": pydantic's message}``; ``loc`` is ``body`` for the body as a whole.
pydantic's messages state the rule (``String should have at most 1024 characters``), but a few
quote what was sent (a union's unknown tag), so a message that contains the submitted value is
replaced by the rule's type (``rule: union_tag_invalid``). Only text outside the rule's own
context counts as quoted: ``"cheap"`` sent for the pattern ``^(refuse|cheaper)$`` keeps the
message ``String should match pattern '^(refuse|cheaper)$'``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from opsgate.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)
_QUOTABLE = 3
"""Submitted text at least this long may not appear in a message (shorter cannot carry a secret)."""


def field_errors(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """``[{"loc", "msg"}]`` from pydantic / FastAPI error dicts (``loc``, ``msg``, ``type``, and
    ``input`` and ``ctx`` when present); no submitted value survives, whether it is the input or
    the tag of a union member inside it."""
    found = []
    for err in errors:
        msg = str(err.get("msg", ""))
        ctx = dict(err.get("ctx") or {})
        sent = [str(v) for v in (err.get("input"), ctx.pop("tag", None))
                if isinstance(v, str | int | float) and len(str(v)) >= _QUOTABLE]
        if any(text in _without_rule(msg, ctx) for text in sent):
            msg = f"rule: {err.get('type', 'invalid')}"
        found.append({"loc": ".".join(str(p) for p in err.get("loc", ())) or "body", "msg": msg})
    return found


def _without_rule(msg: str, ctx: Mapping[str, Any]) -> str:
    """``msg`` without the rule's own text: its context's plain values (a pattern, the expected
    literals, a length), which come from the schema; the caller has taken out the one context
    value that comes from what was sent (a union's ``tag``)."""
    for value in ctx.values():
        if isinstance(value, str | int | float):
            msg = msg.replace(str(value), "")
    return msg


def invalid_input(exc: ValidationError, detail: str) -> InvalidInput:
    """The :class:`InvalidInput` (422) for a pydantic ``exc``, with ``detail`` as its summary."""
    return InvalidInput(detail, errors=field_errors(exc.errors(include_url=False)))


def validated(model: type[M], data: object, strict: bool | None = None) -> M:
    """``model.model_validate(data, strict=strict)`` for untrusted ``data`` (decoded JSON, form
    fields, a TOML table); :class:`InvalidInput` naming the failing fields."""
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        raise invalid_input(exc, "The request body does not match the expected shape") from None
