"""Deterministic schema-valid instances for the JSON schemas a request asks for.

``instance_for(schema)`` walks a JSON Schema (draft 2020-12 / draft 7 as pydantic v2 writes them)
or the OpenAPI 3.0 subset Gemini accepts (``responseSchema``: upper-case ``type`` such as
``"OBJECT"``, ``nullable``, ``format: "enum"``, integer limits written as strings) and builds one
instance that validates against it. The same schema always gives the same instance, so tests and
rehearsals are repeatable.

Supported keywords: ``type`` (a name or a list), ``properties``, ``required``,
``additionalProperties``, ``minProperties``, ``$ref`` into ``$defs`` / ``definitions`` (any
JSON-pointer into the root), ``allOf`` (merged), ``anyOf`` / ``oneOf`` (the first branch that is not
``null``, unless recursion is deep), ``enum``, ``const``, ``items`` / ``prefixItems``,
``minItems`` / ``maxItems``, ``uniqueItems``, ``minLength`` / ``maxLength``, ``pattern`` (a small
set of candidate strings is tried), ``minimum`` / ``maximum`` / ``exclusiveMinimum`` /
``exclusiveMaximum`` (draft 4 booleans too), ``multipleOf``, ``format`` (date-time, date, time,
email, uri, uuid, ipv4, hostname), ``nullable``. Anything else is ignored.

Raises :class:`UnsupportedSchemaError` when no instance can be found (an unsatisfiable
``pattern``, recursion through required fields, a ``$ref`` outside the document).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

MAX_DEPTH = 24
"""Nesting depth past which the schema is taken as unboundedly recursive."""
OPTIONAL_DEPTH = 4
"""Nesting depth from which optional properties, optional items and nullable values are left out."""

_FORMAT_EXAMPLES: dict[str, str] = {
    "date-time": "2025-01-01T09:00:00Z",
    "date": "2025-01-01",
    "time": "09:00:00Z",
    "email": "user@example.com",
    "idn-email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "iri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "hostname": "example.com",
    "duration": "PT1H",
}
_PATTERN_CANDIDATES = ("sandbox", "a", "A", "0", "1", "abc", "ABC", "a1", "2025-01-01", "x-1", "")
_TYPE_ORDER = ("object", "string", "integer", "number", "boolean", "array", "null")


class UnsupportedSchemaError(ValueError):
    """The schema has no instance this generator can build (see the module docstring)."""


def instance_for(schema: dict[str, Any] | bool) -> object:
    """Return a deterministic instance of ``schema`` (a JSON Schema or Gemini OpenAPI schema).

    The result is made of plain JSON values (dict, list, str, int, float, bool, None).
    """
    return _Builder(schema).build(schema, 0)


def answer_for(schema: dict[str, Any] | bool, *, off_schema: bool) -> Any:
    """:func:`instance_for` ``schema``, or ``{}`` with ``off_schema`` (the ``off-schema`` fault: a
    well-formed JSON object that misses the schema's required fields)."""
    return {} if off_schema else instance_for(schema)


class _Builder:
    def __init__(self, root: dict[str, Any] | bool) -> None:
        self._root = root

    def build(self, schema: dict[str, Any] | bool, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise UnsupportedSchemaError("schema recursion through required values is unbounded")
        if schema is True or schema == {}:
            return "sandbox"
        if schema is False:
            raise UnsupportedSchemaError("the schema `false` has no instance")
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                return self.build(self._pick_branch(schema, key, depth), depth + 1)
        return getattr(self, f"_{_kind(schema)}")(schema, depth)

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        seen: set[str] = set()
        while "$ref" in schema:
            ref = schema["$ref"]
            if ref in seen:
                raise UnsupportedSchemaError(f"$ref cycle at {ref}")
            seen.add(ref)
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**self._lookup(ref), **siblings}
        if schema.get("allOf"):
            schema = _merge_all_of(schema, [self._resolve(part) for part in schema["allOf"]])
        return schema

    def _lookup(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#"):
            raise UnsupportedSchemaError(f"only local $ref is supported, got {ref!r}")
        node: Any = self._root
        for token in filter(None, ref[1:].split("/")):
            token = token.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or token not in node:
                raise UnsupportedSchemaError(f"$ref {ref!r} does not resolve")
            node = node[token]
        return node

    def _pick_branch(self, schema: dict[str, Any], key: str, depth: int) -> dict[str, Any]:
        branches = [
            {**{k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}, **b}
            for b in schema[key]
            if isinstance(b, dict)
        ]
        non_null = [b for b in branches if _kind(self._resolve(b)) != "null"]
        null = [b for b in branches if b not in non_null]
        if depth >= OPTIONAL_DEPTH and null:
            return null[0]
        return (non_null or branches)[0]

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties: dict[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        include_optional = depth < OPTIONAL_DEPTH
        result = {
            name: self.build(sub, depth + 1)
            for name, sub in properties.items()
            if name in required or include_optional
        }
        for name in required - result.keys():
            extra = schema.get("additionalProperties")
            result[name] = self.build(extra if isinstance(extra, dict) else True, depth + 1)
        self._fill_min_properties(schema, result, depth)
        return result

    def _fill_min_properties(
        self, schema: dict[str, Any], result: dict[str, Any], depth: int
    ) -> None:
        extra = schema.get("additionalProperties", True)
        index = 0
        while len(result) < _int(schema.get("minProperties"), 0) and extra is not False:
            result[f"key{index}"] = self.build(extra, depth + 1)
            index += 1

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix = [self.build(s, depth + 1) for s in schema.get("prefixItems") or []]
        low = _int(schema.get("minItems"), 0)
        high = _limit(schema.get("maxItems"))
        wanted = max(low, 1 if depth < OPTIONAL_DEPTH else 0, len(prefix))
        if high is not None:
            wanted = min(wanted, high)
        items = schema.get("items", True)
        result = prefix[:wanted]
        for index in range(len(result), wanted):
            result.append(self._item(items, depth, index, bool(schema.get("uniqueItems"))))
        return result

    def _item(self, items: Any, depth: int, index: int, unique: bool) -> Any:
        value = self.build(items, depth + 1)
        if not unique or index == 0:
            return value
        schema = self._resolve(items) if isinstance(items, dict) else {}
        if len(schema.get("enum") or []) > index:
            return schema["enum"][index]
        kind = _kind(schema)
        if kind == "string" and not schema.get("format") and not schema.get("pattern"):
            return _fit_string(f"{value}{index}", schema)
        if kind in ("integer", "number"):
            shifted = {k: v for k, v in schema.items() if k not in ("minimum", "exclusiveMinimum")}
            return _number({**shifted, "minimum": value + index}, integer=kind == "integer")
        raise UnsupportedSchemaError(f"uniqueItems needs {index + 1} distinct {kind} values")

    def _string(self, schema: dict[str, Any], depth: int) -> str:
        fmt = schema.get("format")
        if fmt in _FORMAT_EXAMPLES:
            return _FORMAT_EXAMPLES[fmt]
        pattern = schema.get("pattern")
        if pattern is None:
            return _fit_string("sandbox", schema)
        for candidate in _PATTERN_CANDIDATES:
            value = _fit_string(candidate, schema)
            if re.search(pattern, value):
                return value
        raise UnsupportedSchemaError(f"no candidate string matches pattern {pattern!r}")

    def _integer(self, schema: dict[str, Any], depth: int) -> int:
        return int(_number(schema, integer=True))

    def _number(self, schema: dict[str, Any], depth: int) -> int | float:
        return _number(schema, integer=False)

    def _boolean(self, schema: dict[str, Any], depth: int) -> bool:
        return True

    def _null(self, schema: dict[str, Any], depth: int) -> None:
        return None


def _kind(schema: dict[str, Any]) -> str:
    declared = schema.get("type")
    if isinstance(declared, list):
        names = [str(t).lower() for t in declared]
        non_null = [t for t in _TYPE_ORDER if t in names and t != "null"]
        return non_null[0] if non_null else "null"
    if declared is not None and str(declared).lower() not in _TYPE_ORDER:
        raise UnsupportedSchemaError(f"unknown type {declared!r}")
    if declared is not None:
        return str(declared).lower()
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    if "format" in schema or "pattern" in schema or "minLength" in schema:
        return "string"
    if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
        return "number"
    return "string"


def _merge_all_of(schema: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    for part in parts:
        for key, value in part.items():
            if key == "properties":
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required":
                merged["required"] = sorted({*merged.get("required", []), *value})
            else:
                merged.setdefault(key, value)
    return merged


def _int(value: Any, default: int) -> int:
    return default if value is None else int(value)


def _limit(value: Any) -> int | None:
    return None if value is None else int(value)


def _fit_string(text: str, schema: dict[str, Any]) -> str:
    low = _int(schema.get("minLength"), 0)
    high = _limit(schema.get("maxLength"))
    text = text + "x" * max(0, low - len(text))
    return text if high is None else text[:high]


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    low, low_open = _bound(schema, "minimum", "exclusiveMinimum")
    high, high_open = _bound(schema, "maximum", "exclusiveMaximum")
    interval = _Interval(low, low_open, high, high_open)
    if schema.get("multipleOf"):
        value = interval.multiple(Decimal(str(schema["multipleOf"])))
    elif integer:
        value = interval.multiple(Decimal(1))
    else:
        value = interval.point()
    return int(value) if integer or value == value.to_integral_value() else float(value)


def _bound(schema: dict[str, Any], inclusive: str, exclusive: str) -> tuple[Decimal | None, bool]:
    flag = schema.get(exclusive)
    if isinstance(flag, bool):  # draft 4: exclusiveMinimum is a flag on minimum
        value = schema.get(inclusive)
        return (None if value is None else Decimal(str(value))), flag
    if flag is not None:
        return Decimal(str(flag)), True
    value = schema.get(inclusive)
    return (None if value is None else Decimal(str(value))), False


class _Interval:
    """A numeric range with open or closed ends; ``None`` means unbounded."""

    PREFERRED = Decimal(1)

    def __init__(self, low: Decimal | None, low_open: bool, high: Decimal | None, high_open: bool):
        self.low, self.low_open, self.high, self.high_open = low, low_open, high, high_open

    def contains(self, v: Decimal) -> bool:
        above = self.low is None or (v > self.low if self.low_open else v >= self.low)
        below = self.high is None or (v < self.high if self.high_open else v <= self.high)
        return above and below

    def point(self) -> Decimal:
        """The preferred value 1 when inside, else the nearest closed end or a point inside."""
        if self.contains(self.PREFERRED):
            return self.PREFERRED
        if self.low is not None and self.high is not None:
            candidate = self.low if not self.low_open else (self.low + self.high) / 2
        elif self.low is not None:
            candidate = self.low if not self.low_open else self.low + 1
        else:
            assert self.high is not None
            candidate = self.high if not self.high_open else self.high - 1
        if not self.contains(candidate):
            raise UnsupportedSchemaError("the numeric bounds leave no value")
        return candidate

    def multiple(self, step: Decimal) -> Decimal:
        """A multiple of ``step`` inside: the nearest to the preferred value, else to an end."""
        anchors = [self.PREFERRED, *(b for b in (self.low, self.high) if b is not None)]
        for anchor in anchors:
            up, down = math.ceil(anchor / step), math.floor(anchor / step)
            for k in (up, down, up + 1, down - 1):
                if self.contains(Decimal(k) * step):
                    return Decimal(k) * step
        raise UnsupportedSchemaError("no multiple of the step lies within the numeric bounds")
