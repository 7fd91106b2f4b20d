"""JSON Schema transforms for providers that cannot take an operation's schema as it is.

- :func:`inline_refs`: resolves local ``$ref`` pointers (``#/$defs/Name``, ``#/definitions/Name``)
  and drops the definitions, for providers that do not follow references.
- :func:`to_gemini_schema`: turns a JSON Schema (pydantic v2 ``model_json_schema()`` output
  included) into the OpenAPI 3.0 subset Gemini's ``generationConfig.responseSchema`` accepts
  (Gemini API reference, "Schema" object; the google-genai SDK's ``process_schema`` does the same).
"""

from __future__ import annotations

import copy
from typing import Any

Schema = dict[str, Any]

_DEF_PREFIXES = ("#/$defs/", "#/definitions/")
_GEMINI_FORMATS = {
    "STRING": {"date-time", "enum"},
    "NUMBER": {"float", "double"},
    "INTEGER": {"int32", "int64"},
}
_TYPE_BOUNDS = {
    "ARRAY": ("minItems", "maxItems"),
    "NUMBER": ("minimum", "maximum"),
    "INTEGER": ("minimum", "maximum"),
}


def inline_refs(schema: Schema) -> Schema:
    """Return a copy of ``schema`` with every local ``$ref`` replaced by its definition.

    Keywords next to a ``$ref`` (e.g. a field's ``description``) are kept and win over the
    definition's own. The root's ``$defs``/``definitions`` are dropped. Raises ``ValueError`` for a
    recursive schema (it cannot be inlined) or a reference that is not a local definition.
    """
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    root = {k: v for k, v in schema.items() if k not in ("$defs", "definitions")}
    return _inline(root, defs, ())


def _inline(node: Any, defs: Schema, seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = _def_name(ref)
        if name in seen:
            raise ValueError(f"schema is recursive through {name!r}; it cannot be inlined")
        if name not in defs:
            raise ValueError(f"schema reference {ref!r} has no definition")
        resolved = _inline(copy.deepcopy(defs[name]), defs, (*seen, name))
        siblings = {k: _inline(v, defs, seen) for k, v in node.items() if k != "$ref"}
        return {**resolved, **siblings}
    return {key: _inline(value, defs, seen) for key, value in node.items()}


def _def_name(ref: str) -> str:
    for prefix in _DEF_PREFIXES:
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    raise ValueError(f"schema reference {ref!r} is not a local definition")


def to_gemini_schema(schema: Schema) -> Schema:
    """Convert a JSON Schema into Gemini's ``responseSchema`` (OpenAPI 3.0 subset).

    References are inlined first. Kept: ``type`` (upper-case), ``format`` (only ``date-time``/
    ``enum`` for strings, ``float``/``double``, ``int32``/``int64``), ``description``,
    ``nullable``, string ``enum`` (a string ``const`` becomes a one-value ``enum``),
    ``properties``, ``required``, ``propertyOrdering`` (added in declaration order when absent),
    ``items``, ``minItems``/``maxItems``, ``minimum``/``maximum`` and ``anyOf``. ``anyOf``/``oneOf``
    with a ``{"type": "null"}`` branch and ``type: [X, "null"]`` become ``X`` with
    ``nullable: true``. Everything else (``title``, ``default``, ``additionalProperties``,
    ``$schema``, ``pattern``, ...) is dropped. Raises ``ValueError`` like :func:`inline_refs`.
    """
    return _convert(inline_refs(schema))


def _convert(node: Schema) -> Schema:
    union = node.get("anyOf", node.get("oneOf"))
    if isinstance(union, list):
        return _convert_union(node, union)
    type_ = node.get("type")
    if isinstance(type_, list):
        return _convert_union(node, [{"type": t} for t in type_])
    out: Schema = {}
    gemini_type = _gemini_type(node)
    if gemini_type:
        out["type"] = gemini_type
    if isinstance(node.get("format"), str) and node["format"] in _GEMINI_FORMATS.get(
        gemini_type, ()
    ):
        out["format"] = node["format"]
    if isinstance(node.get("description"), str):
        out["description"] = node["description"]
    if node.get("nullable") is True:
        out["nullable"] = True
    out.update(_enum(node))
    out.update(_object_parts(node))
    if isinstance(node.get("items"), dict):
        out["items"] = _convert(node["items"])
    for bound in _TYPE_BOUNDS.get(gemini_type, ()):
        if isinstance(node.get(bound), int | float) and not isinstance(node[bound], bool):
            out[bound] = node[bound]
    return out


def _convert_union(node: Schema, branches: list[Any]) -> Schema:
    outer = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf", "type")}
    kept = [b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")]
    nullable = len(kept) < len(branches)
    if len(kept) == 1 and isinstance(kept[0], dict):
        out = _convert({**kept[0], **outer})
    else:
        out = _convert(outer)
        out["anyOf"] = [_convert(b) for b in kept if isinstance(b, dict)]
    if nullable:
        out["nullable"] = True
    return out


def _gemini_type(node: Schema) -> str:
    type_ = node.get("type")
    if isinstance(type_, str) and type_ != "null":
        return type_.upper()
    if "properties" in node:
        return "OBJECT"
    if "items" in node:
        return "ARRAY"
    if "enum" in node or "const" in node:
        return "STRING"
    return ""


def _enum(node: Schema) -> Schema:
    values = node.get("enum")
    if values is None and "const" in node:
        values = [node["const"]]
    if isinstance(values, list) and values and all(isinstance(v, str) for v in values):
        return {"enum": list(values)}
    return {}


def _object_parts(node: Schema) -> Schema:
    properties = node.get("properties")
    if not isinstance(properties, dict):
        return {}
    out: Schema = {"properties": {name: _convert(sub) for name, sub in properties.items()}}
    required = [name for name in node.get("required", []) if name in properties]
    if required:
        out["required"] = required
    ordering = node.get("propertyOrdering")
    if isinstance(ordering, list):
        out["propertyOrdering"] = [name for name in ordering if name in properties]
    elif len(properties) > 1:
        out["propertyOrdering"] = list(properties)
    return out
