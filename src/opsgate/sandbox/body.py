"""Reading and type-checking the sandboxes' JSON request bodies.

The real APIs answer a malformed body with 400 (invalid JSON, a string that is not valid Unicode,
a field of the wrong type); the sandboxes raise :class:`BodyError` for all of these and each
answers it in its provider's error format. The checks follow the request formats the providers
document (Anthropic Messages, Gemini ``GenerateContentRequest``, OpenAI/DeepSeek Chat
Completions), for the subset the sandboxes read.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

_TYPE_NAMES: dict[type, str] = {
    str: "a string", int: "an integer", bool: "a boolean", dict: "an object", list: "a list",
    float: "a number",
}


class BodyError(ValueError):
    """The request body is not valid JSON, not valid Unicode, or breaks the request format;
    the message names the field (``messages.0.content: ...``)."""


async def read_json(request: web.Request) -> Any:
    """The JSON body of ``request``; raises :class:`BodyError` for bytes that are not UTF-8 JSON
    and for strings holding an unpaired surrogate (``"\\ud800"``), which no provider accepts."""
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BodyError(f"The request body is not valid JSON: {exc}") from None
    _check_unicode(body, "body")
    return body


def _check_unicode(value: Any, path: str) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BodyError(f"{path}: string is not valid Unicode (unpaired surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key, path)
            _check_unicode(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_unicode(item, f"{path}.{index}")


def expect(value: Any, path: str, *types: type) -> Any:
    """``value`` if it is one of ``types`` (``bool`` is not an ``int``; ``int`` passes for
    ``float``), else :class:`BodyError` ``"<path>: Input should be <type>"``."""
    if isinstance(value, bool):
        ok = bool in types
    else:
        ok = isinstance(value, types) or (float in types and isinstance(value, int))
    if not ok:
        names = " or ".join(_TYPE_NAMES[t] for t in types)
        raise BodyError(f"{path}: Input should be {names}")
    return value


def optional(body: dict[str, Any], key: str, path: str, *types: type) -> Any:
    """``body[key]`` checked as :func:`expect`, or ``None`` when absent or null."""
    value = body.get(key)
    return None if value is None else expect(value, f"{path}{key}", *types)


def required(body: dict[str, Any], key: str, path: str, *types: type) -> Any:
    """``body[key]`` checked as :func:`expect`; absent or null: ``"<path>: Field required"``."""
    if body.get(key) is None:
        raise BodyError(f"{path}{key}: Field required")
    return expect(body[key], f"{path}{key}", *types)


def objects(value: Any, path: str) -> list[dict[str, Any]]:
    """``value`` as a list of objects (each element checked), else :class:`BodyError`."""
    items = expect(value, path, list)
    for index, item in enumerate(items):
        expect(item, f"{path}.{index}", dict)
    return items


def one_of(value: Any, path: str, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of the strings ``allowed``, else :class:`BodyError`."""
    if not isinstance(value, str) or value not in allowed:
        quoted = ", ".join(repr(a) for a in allowed)
        raise BodyError(f"{path}: Input should be one of {quoted}")
    return value
