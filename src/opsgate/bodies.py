"""Request bodies: the one reader of every route that takes one (the operations, the admin API,
the sign-in forms).

A JSON body (:func:`decode_json`) is refused, before anything acts on it, when:

* it is sent with a ``Content-Encoding`` other than ``identity`` (``gzip``, ``br``, ...):
  :class:`~opsgate.errors.UnsupportedMediaType` (415, RFC 9110 §15.5.16, naming the coding, with
  ``Accept-Encoding: identity``), before it is read (:func:`read_body`, every route with a body, a
  form too). No route decodes a content coding; read as JSON, a gzip body was "not valid JSON";
* it is larger than the route's limit: :class:`~opsgate.errors.ContentTooLarge` (413), decided on
  ``Content-Length`` or, without one, as soon as the stream passes the limit (never buffered whole);
* it is not empty and its ``Content-Type`` is not JSON (``application/json`` or a ``+json``
  suffix type, RFC 6839 §3.1; a ``charset`` other than UTF-8, RFC 8259 §8.1):
  :class:`~opsgate.errors.UnsupportedMediaType` (415). A ``text/plain`` body is not read as JSON;
* it is not JSON (RFC 8259): :class:`~opsgate.errors.InvalidInput` (422). orjson refuses what the
  standard library would let through: ``NaN``, ``Infinity``, unpaired surrogates, invalid UTF-8,
  nesting past 1024 levels, numbers that overflow a double;
* it nests arrays and objects more than :data:`MAX_DEPTH` levels deep: 422. The depth is counted
  without recursion, right after orjson (which does not recurse in Python) and before anything
  that does: the standard library's re-parse below, pydantic, the ledger's canonical form. The
  re-parse's C scanner raised ``RecursionError`` (a 500) from about 1,000 levels, which orjson
  accepts. Past 1024 levels orjson itself stops ("depth limit exceeded"): that refusal gets the
  same depth message, not "not valid JSON" (tester-wire F9);
* a string or a key holds a NUL character (``\u0000``): 422 naming where. PostgreSQL ``text``
  refuses NUL (a 500 there, stored on SQLite), so no body may carry one into any store; no route's
  text means anything by it (RFC 5322 forbids it in a message). Looked for only when the raw body
  holds the escape ``\u0000`` (the only way JSON can write NUL), so an ordinary body costs a
  substring search;
* an object repeats a key (RFC 8259 §4 leaves the meaning open; one parser keeps the first, another
  the last, so the repeated value would be silently dropped), or an integer lies outside the
  signed 64-bit range (orjson would turn it into a float, silently changing it): 422.

No message quotes the body. The duplicate and range checks cost a second parse only when the
body could hold either (more ``"…":`` key ends in the text than keys decoded, or a number of
magnitude 2**63 or more), so an ordinary operation body is parsed once.

A form body (:func:`decode_form`, ``application/x-www-form-urlencoded``, :func:`is_form`) is
refused with 415 when its ``Content-Type`` declares a ``charset`` other than UTF-8 (the body is
always decoded as UTF-8, so a Latin-1 form would be misread), and with 422 when it is not UTF-8
after percent-decoding, has more than :data:`MAX_FORM_FIELDS` fields, repeats a
field (RFC 6749 §3.1: a parameter MUST NOT be sent more than once) or holds a NUL (``%00``), and is
read within a limit like a JSON body (a ``Content-Encoding`` refused as above).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request

from opsgate.errors import ContentTooLarge, InvalidInput, UnsupportedMediaType

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 32
MAX_DEPTH = 32
"""The deepest nesting of arrays and objects a JSON body may have (``{"a": [1]}`` is 2 deep):
every route's body, operations and admin. The ledger's entries nest at most as deep
(:data:`opsgate.ledger.entry.MAX_DEPTH`); no route's input nests past a few levels."""
_KEY_END = re.compile(rb'"[ \t\n\r]*:')
_TOO_DEEP = f"The request body nests arrays and objects more than {MAX_DEPTH} levels deep"
_ORJSON_DEPTH = "depth limit exceeded"
"""How orjson's ``JSONDecodeError.msg`` begins when a document nests past its 1024 levels."""
_NUL_ESCAPE = b"\\u0000"
_NUL_MSG = "must not contain a NUL character (U+0000)"
_INT64 = range(-(2**63), 2**63)
_WIDE = 2**63


def is_json(content_type: str | None) -> bool:
    """True for ``application/json`` and ``type/subtype+json`` (any case), with no ``charset``
    parameter or ``charset=utf-8``."""
    media, params = _media_type(content_type)
    json_type = media == JSON or (media.startswith("application/") and media.endswith("+json"))
    return json_type and _utf8(params)


def is_form(content_type: str | None) -> bool:
    """True for ``application/x-www-form-urlencoded`` (any case) with no ``charset`` parameter or
    ``charset=utf-8``."""
    media, params = _media_type(content_type)
    return media == FORM and _utf8(params)


def _media_type(content_type: str | None) -> tuple[str, list[str]]:
    """The lower-cased media type of a ``Content-Type`` value and its parameters."""
    media, *params = (content_type or "").lower().split(";")
    return media.strip(), params


def _utf8(params: list[str]) -> bool:
    """No ``charset`` among ``params``, or only UTF-8 (RFC 8259 §8.1; the WHATWG form encoding)."""
    charsets = [p.split("=", 1)[1].strip().strip('"') for p in params if p.strip().startswith("charset=")]
    return all(c in ("utf-8", "utf8") for c in charsets)


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, at most ``limit`` bytes; :class:`UnsupportedMediaType` (415) for a
    ``Content-Encoding`` other than ``identity`` (:func:`check_content_encoding`), before reading;
    :class:`ContentTooLarge` (413) as soon as the declared ``Content-Length`` or the bytes received
    pass ``limit``."""
    check_content_encoding(request.headers.get("content-encoding"))
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise ContentTooLarge(f"The request body exceeds {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ContentTooLarge(f"The request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def check_content_encoding(value: str | None) -> None:
    """:class:`UnsupportedMediaType` (415, RFC 9110 §15.5.16, with ``Accept-Encoding: identity``)
    naming the first content coding of a ``Content-Encoding`` header ``value`` that is not
    ``identity`` (RFC 9110 §8.4: a comma-separated list, any case); nothing for no header or only
    ``identity``. No route decodes a coding, so a compressed body is refused, never misread."""
    codings = [c.strip().lower() for c in (value or "").split(",")]
    unsupported = [c for c in codings if c and c != "identity"]
    if unsupported:
        coding = unsupported[0] if unsupported[0].isascii() and unsupported[0].isprintable() else "?"
        raise UnsupportedMediaType(
            f"The request body's content encoding {coding[:32]!r} is not supported; send it uncompressed "
            "(Content-Encoding: identity or none)",
            response_headers={"Accept-Encoding": "identity"},
        )


def decode_json(raw: bytes, content_type: str | None) -> Any:
    """``raw`` (a non-empty body sent as ``content_type``) decoded; :class:`UnsupportedMediaType`
    (415) or :class:`InvalidInput` (422) as the module says."""
    if not is_json(content_type):
        raise UnsupportedMediaType(f"The request body must be {JSON} (UTF-8)")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if exc.msg.startswith(_ORJSON_DEPTH):  # orjson's own nesting limit (1024), past MAX_DEPTH
            raise InvalidInput(_TOO_DEEP) from None
        raise InvalidInput("The request body is not valid JSON") from None
    keys, wide, depth = _scan(data)
    if depth > MAX_DEPTH:
        raise InvalidInput(_TOO_DEEP)
    if _NUL_ESCAPE in raw:
        _check_no_nul(data)
    if wide or _key_ends(raw) != keys:
        _check_keys_and_integers(raw)
    return data


def _key_ends(raw: bytes) -> int:
    """An upper bound of the keys written in ``raw``: every key ends ``"`` [whitespace] ``:``
    (a string value may hold the same bytes, which only makes the bound larger)."""
    return len(_KEY_END.findall(raw))


def nesting_depth(data: Any) -> int:
    """How deep arrays and objects nest in ``data`` (as orjson or :mod:`json` decode it; a scalar
    is 0 deep, ``{"a": [1]}`` 2), counted without recursion: for a JSON document read from
    elsewhere (an invoice export) to follow the :data:`MAX_DEPTH` rule."""
    return _scan(data)[2]


def _scan(data: Any) -> tuple[int, bool, int]:
    """How many keys the objects in ``data`` hold, nested ones included; whether a number in it
    may have been an integer past 64 bits (an int out of range, or a float of at least 2**63,
    which orjson makes of a larger integer); and how deep arrays and objects nest (a scalar is
    0 deep). Iterative: orjson nests up to 1024 levels, past Python's recursion limit."""
    count, wide, deepest, todo = 0, False, 0, [(data, 1)]
    while todo:
        item, depth = todo.pop()
        kind = type(item)  # orjson makes exactly these types, no subclasses
        if kind is dict or kind is list:
            deepest = max(deepest, depth)
            values = item.values() if kind is dict else item
            count += len(item) if kind is dict else 0
            todo.extend((value, depth + 1) for value in values)
        elif kind is int or kind is float:
            wide = wide or abs(item) >= _WIDE
    return count, wide, deepest


def _check_no_nul(data: Any) -> None:
    """:class:`InvalidInput` (422) when a string or an object key in ``data`` (decoded JSON) holds
    a NUL, naming its place as :mod:`opsgate.validation` does (``reason``, ``tasks.1.title``;
    ``body`` for the body itself; a key that is not a short identifier is ``*``; the key's parent
    for a key), never the value. Iterative, like :func:`_scan`."""
    todo: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while todo:
        item, path = todo.pop()
        if type(item) is str:
            if "\x00" in item:
                loc = ".".join(path) or "body"
                raise InvalidInput(f"{loc} {_NUL_MSG}", errors=[{"loc": loc, "msg": _NUL_MSG}])
        elif type(item) is dict:
            for key, value in item.items():
                if "\x00" in key:
                    loc = ".".join(path) or "body"
                    raise InvalidInput(f"A key of {loc} {_NUL_MSG}", errors=[{"loc": loc, "msg": f"a key {_NUL_MSG}"}])
                todo.append((value, (*path, key if key.isidentifier() and len(key) <= 64 else "*")))
        elif type(item) is list:
            todo.extend((value, (*path, str(i))) for i, value in enumerate(item))


def _check_keys_and_integers(raw: bytes) -> None:
    """:class:`InvalidInput` when an object of ``raw`` (valid JSON) repeats a key or an integer is
    outside the signed 64-bit range."""
    try:
        json.loads(raw, object_pairs_hook=_unique, parse_int=_int64)
    except _Refused as exc:
        raise InvalidInput(str(exc), errors=[{"loc": "body", "msg": str(exc)}]) from None


class _Refused(ValueError):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _Refused("The request body repeats a key within one object")
    return found


def _int64(text: str) -> int:
    if len(text) > 20 or int(text) not in _INT64:  # 20: a sign and 19 digits; longer never fits
        raise _Refused("The request body holds an integer outside the signed 64-bit range")
    return int(text)


def decode_form(raw: bytes) -> dict[str, str]:
    """``raw`` (an ``application/x-www-form-urlencoded`` body) as ``{field: value}``;
    :class:`InvalidInput` (422) for invalid UTF-8, too many fields, a repeated field or a NUL
    (``%00``) in a field's name or value."""
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict",
                          max_num_fields=MAX_FORM_FIELDS)
    except ValueError:  # UnicodeDecodeError included
        raise InvalidInput("The form body could not be parsed") from None
    found = dict(pairs)
    if len(found) != len(pairs):
        raise InvalidInput("The form body repeats a field")
    if any("\x00" in key or "\x00" in value for key, value in pairs):
        raise InvalidInput(f"A field of the form body {_NUL_MSG}")
    return found
