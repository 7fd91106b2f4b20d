"""Validation failures as :class:`~opsgate.errors.InvalidInput`: fields and rules, never values.

Every 422 the gateway sends goes through :func:`field_errors`, whether pydantic refused an
operation's input (the pipeline), a route's body (:mod:`opsgate.deps`) or FastAPI refused a path
or query parameter (the app's one ``RequestValidationError`` handler). Each error is
``{"loc": "a.b.0", "msg": pydantic's message}``; ``loc`` is ``body`` for the body as a whole.

A ``loc`` names only what the schema defines: a part is kept when it is a list index or one of
the schema's field names (:func:`schema_names`); any other part is the caller's own text (an
unknown key, refused as ``extra_forbidden``, a key of a dict-valued field, a union's tag) and is
shown as ``*``. ``{"SSN 123-45-6789": 1}`` sent where no such field exists is
``{"loc": "*", "msg": "Extra inputs are not permitted"}``.
pydantic's messages state the rule (``String should have at most 1024 characters``), but a few
quote what was sent (a union's unknown tag), so a message that contains the submitted value is
replaced by the rule's type (``rule: union_tag_invalid``). Only text outside the rule's own
context counts as quoted: ``"cheap"`` sent for the pattern ``^(refuse|cheaper)$`` keeps the
message ``String should match pattern '^(refuse|cheaper)$'``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from functools import cache
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from opsgate.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)
_QUOTABLE = 3
"""Submitted text at least this long may not appear in a message (shorter cannot carry a secret)."""
UNNAMED = "*"
"""A ``loc`` part the schema does not define (the caller's own key), as shown."""


def field_errors(errors: Iterable[Mapping[str, Any]], names: Collection[str]) -> list[dict[str, str]]:
    """``[{"loc", "msg"}]`` from pydantic / FastAPI error dicts (``loc``, ``msg``, ``type``, and
    ``input`` and ``ctx`` when present); no submitted value survives, whether it is the input or
    the tag of a union member inside it, and no submitted key: a ``loc`` part that is neither a
    list index nor in ``names`` (the field names the schema defines) becomes ``*``."""
    found = []
    for err in errors:
        msg = str(err.get("msg", ""))
        ctx = dict(err.get("ctx") or {})
        sent = [str(v) for v in (err.get("input"), ctx.pop("tag", None))
                if isinstance(v, str | int | float) and len(str(v)) >= _QUOTABLE]
        if any(text in _without_rule(msg, ctx) for text in sent):
            msg = f"rule: {err.get('type', 'invalid')}"
        loc = ".".join(_named(part, names) for part in err.get("loc", ()))
        found.append({"loc": loc or "body", "msg": msg})
    return found


def _named(part: object, names: Collection[str]) -> str:
    if isinstance(part, int) and not isinstance(part, bool):
        return str(part)
    return part if isinstance(part, str) and part in names else UNNAMED


@cache
def schema_names(*models: type[BaseModel]) -> frozenset[str]:
    """Every field name (validation alias) ``models`` and the models nested in them define, and
    the tags of their discriminated unions: the ``properties`` and discriminator ``mapping`` keys
    anywhere in their JSON schemas."""
    names: set[str] = set()
    pending: list[Any] = [m.model_json_schema() for m in models]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            for defined in (node.get("properties"), node.get("mapping")):
                if isinstance(defined, dict):
                    names.update(defined)
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return frozenset(names)


def _without_rule(msg: str, ctx: Mapping[str, Any]) -> str:
    """``msg`` without the rule's own text: its context's plain values (a pattern, the expected
    literals, a length), which come from the schema; the caller has taken out the one context
    value that comes from what was sent (a union's ``tag``)."""
    for value in ctx.values():
        if isinstance(value, str | int | float):
            msg = msg.replace(str(value), "")
    return msg


def invalid_input(exc: ValidationError, model: type[BaseModel], detail: str) -> InvalidInput:
    """The :class:`InvalidInput` (422) for a pydantic ``exc`` raised validating ``model``, with
    ``detail`` as its summary."""
    return InvalidInput(detail, errors=field_errors(exc.errors(include_url=False), schema_names(model)))


def validated(model: type[M], data: object, strict: bool | None = None) -> M:
    """``model.model_validate(data, strict=strict)`` for untrusted ``data`` (decoded JSON, form
    fields, a TOML table); :class:`InvalidInput` naming the failing fields."""
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        raise invalid_input(exc, model, "The request body does not match the expected shape") from None
