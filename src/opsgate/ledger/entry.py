"""Canonical ledger entries and the hash chain (format ``opsgate.ledger.v1``).

Body
    The exact bytes stored in ``ledger_entries.body``: the RFC 8785 (JSON Canonicalization Scheme)
    serialisation, UTF-8, of one JSON object::

        {"v": 1, "seq": N, "ts": "2026-11-30T06:01:02.123456Z", "kind": K, ...payload}

    ``v`` is the format version (1). ``seq`` is the entry's position, 0 for the first entry, with no
    gaps. ``ts`` is UTC with exactly six fractional digits and a ``Z``; the writer clamps it so it
    never goes backwards (``ts = max(now, previous ts)``). ``kind`` matches ``[a-z][a-z0-9_.-]{0,63}``.
    The payload's top-level keys sit beside the envelope keys (they may not reuse ``v``, ``seq``,
    ``ts`` or ``kind``). Payload values are strings, booleans, ``null``, integers within
    ±(2**53 - 1) (I-JSON, RFC 7493 §2.2), lists and objects of those; floats are refused, because
    their canonical text is where independent implementations disagree.

Chain
    ``entry_hash = SHA-256(b"opsgate.ledger.v1.chain\\x00" || prev_hash || body)``, where
    ``prev_hash`` is the previous entry's ``entry_hash`` and 32 zero bytes for ``seq`` 0. The domain
    prefix keeps chain hashes from ever colliding with other SHA-256 uses of the same bytes.

Merkle tree
    The stored body is also the RFC 9162 §2.1.1 leaf input (:mod:`opsgate.ledger.merkle`): leaf index = ``seq``, leaf hash =
    ``SHA-256(0x00 || body)``, interior node = ``SHA-256(0x01 || left || right)``. A C2SP
    ``tlog-checkpoint`` of tree size ``N`` then commits to entries ``0 .. N-1``, and its inclusion and
    consistency proofs need nothing beyond the bodies already stored. See docs/ledger.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import rfc8785

from opsgate.ledger.errors import LedgerError

FORMAT_VERSION = 1
CHAIN_DOMAIN = b"opsgate.ledger.v1.chain\x00"
GENESIS_PREV_HASH = bytes(32)
FIRST_SEQ = 0
MAX_SAFE_INT = 2**53 - 1
ENVELOPE_KEYS = frozenset({"v", "seq", "ts", "kind"})
MAX_DEPTH = 32

_KIND_RE = re.compile(r"[a-z][a-z0-9_.-]{0,63}\Z")
_TS_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z\Z")


@dataclass(frozen=True, slots=True)
class ChainedEntry:
    """One row of ``ledger_entries``: ``prev_hash`` and ``entry_hash`` are 32 raw bytes."""

    seq: int
    prev_hash: bytes
    entry_hash: bytes
    body: bytes


def format_ts(ts: datetime) -> str:
    """``ts`` (timezone-aware) as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC. Naive -> LedgerError."""
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise LedgerError("ledger timestamps must be timezone-aware")
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text: str) -> datetime:
    """The inverse of :func:`format_ts`; anything else raises LedgerError."""
    if not _TS_RE.match(text):
        raise LedgerError(f"timestamp {text!r} is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
    return datetime.fromisoformat(text)


def clean_payload(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Check ``kind`` and ``payload`` for a v1 body; return a detached deep copy of ``payload``.

    The copy means a caller that mutates its dict after appending cannot change what is written.
    Refused with LedgerError naming the offending path (e.g. ``payload.usage.cost``): a non-dict
    payload, a non-str key, a reserved envelope key at top level, a float (including NaN and
    infinities) anywhere, an integer outside ±(2**53 - 1), a string that is not valid Unicode
    (lone surrogates), a tuple, set, bytes or any other type, nesting deeper than 32.
    """
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise LedgerError(f"ledger kind {kind!r} must match [a-z][a-z0-9_.-]{{0,63}}")
    if not isinstance(payload, dict):
        raise LedgerError(f"ledger payload must be a dict, not {type(payload).__name__}")
    reserved = ENVELOPE_KEYS.intersection(k for k in payload if isinstance(k, str))
    if reserved:
        raise LedgerError(f"ledger payload may not set envelope keys {sorted(reserved)}")
    try:
        return _copy(payload, 0)
    except (_Refused, UnicodeEncodeError):
        pass  # refused: the checked copy below says where and why
    try:
        return _clean(payload, 0)
    except _Refused as exc:
        raise LedgerError(f"payload{exc.path}: {exc.reason}") from None


def _copy(value: Any, depth: int) -> Any:
    """:func:`_clean` of ``value`` without the refusal's path: the exact types a payload is built
    of (``str``, ``int``, ``dict``, ``list``, ``None``, ``bool``) are checked inline, anything else
    goes to :func:`_clean`. Raises :class:`_Refused` or ``UnicodeEncodeError`` where
    :func:`_clean` refuses; ~1.5x faster (a call's intent and result are cleaned on the event loop,
    issue 21)."""
    kind = type(value)
    if kind is str:
        if not value.isascii():
            value.encode()  # a lone surrogate raises UnicodeEncodeError
        return value
    if kind is int:
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise _Refused("integer outside ±(2**53-1)")
        return value
    if value is None or kind is bool:
        return value
    if kind is dict:
        if depth >= MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH}")
        return {(key if type(key) is str and key.isascii() else _check_key(key)): _copy(item, depth + 1)
                for key, item in value.items()}
    if kind is list:
        if depth >= MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH}")
        return [_copy(item, depth + 1) for item in value]
    return _clean(value, depth)


class _Refused(Exception):
    """A value :func:`clean_payload` refuses; ``path`` is filled in while unwinding."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = ""

    def within(self, step: str) -> _Refused:
        self.path = step + self.path
        return self


def _clean(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise _Refused("integer outside ±(2**53-1)")
        return value
    if isinstance(value, str):
        return _check_str(value)
    if depth >= MAX_DEPTH:
        raise _Refused(f"nested deeper than {MAX_DEPTH}")
    if isinstance(value, dict):
        return {_check_key(key): _clean_item(item, key, depth) for key, item in value.items()}
    if isinstance(value, list):
        return [_clean_item(item, index, depth) for index, item in enumerate(value)]
    if isinstance(value, float):
        raise _Refused("floats are not allowed in ledger entries (use integers)")
    raise _Refused(f"{type(value).__name__} is not a JSON value")


def _clean_item(item: Any, where: str | int, depth: int) -> Any:
    try:
        return _clean(item, depth + 1)
    except _Refused as exc:
        raise exc.within(f"[{where}]" if isinstance(where, int) else f".{where}") from None


def _check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise _Refused(f"key {key!r} is not a string")
    return _check_str(key)


def _check_str(text: str) -> str:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _Refused("string is not valid Unicode (lone surrogate)") from None
    return text


def encode_body(seq: int, ts: str, kind: str, payload: dict[str, Any]) -> bytes:
    """The RFC 8785 bytes of ``{"v":1,"seq":seq,"ts":ts,"kind":kind,**payload}``.

    ``payload`` must come from :func:`clean_payload` (so: no floats, safe integers, valid Unicode);
    ``ts`` comes from :func:`format_ts`. See :func:`canonical_json` for how the bytes are made.
    """
    obj = {**payload, "v": FORMAT_VERSION, "seq": seq, "ts": ts, "kind": kind}
    return canonical_json(obj)


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 bytes of a float-free JSON value (integers within ±(2**53-1), valid Unicode).

    For such values RFC 8785 differs from Python's compact, key-sorted, non-ASCII-escaping encoder
    in one place only: RFC 8785 sorts object keys by UTF-16 code units, Python by code point, and the
    two orders disagree only between characters U+E000..U+FFFF and those above U+FFFF. Both escape
    exactly ``"``, ``\\`` and U+0000..U+001F the same way, and print safe integers alike. So the fast
    encoder's output is used when it holds no UTF-8 lead byte >= 0xEE (no character >= U+E000),
    and the ``rfc8785`` package is used otherwise. tests/ledger pins the equality with hypothesis.
    """
    fast = _ENCODER.encode(obj).encode("utf-8")
    if fast.isascii() or not _HIGH_CHAR.search(fast):
        return fast
    return rfc8785.dumps(obj)


def chain_hash(prev_hash: bytes, body: bytes) -> bytes:
    """``SHA-256(b"opsgate.ledger.v1.chain\\x00" || prev_hash || body)``, 32 bytes."""
    digest = hashlib.sha256(CHAIN_DOMAIN)
    digest.update(prev_hash)
    digest.update(body)
    return digest.digest()


def chain_entry(seq: int, prev_hash: bytes, body: bytes) -> ChainedEntry:
    """The row for ``body`` at ``seq`` after an entry whose hash is ``prev_hash``."""
    return ChainedEntry(seq, prev_hash, chain_hash(prev_hash, body), body)


def decode_body(body: bytes) -> dict[str, Any]:
    """Parse a stored body and check it is exactly what the writer produces, else LedgerError.

    Checks: strict UTF-8; JSON without floats, NaN/Infinity or unsafe integers; byte-for-byte equal
    to its own RFC 8785 serialisation (so no whitespace, escapes, key order or duplicate keys
    beyond the canonical ones); envelope ``v`` = 1, integer ``seq``, ``ts`` in :func:`format_ts`
    form and a valid ``kind``. Returns the parsed object.
    """
    try:
        obj = _DECODER.decode(body.decode("utf-8"))
        canonical = canonical_json(obj)
    except (ValueError, UnicodeError, RecursionError, rfc8785.CanonicalizationError) as exc:
        raise LedgerError(f"body is not canonical JSON: {exc}") from None
    if canonical != body:
        raise LedgerError("body is not in RFC 8785 canonical form")
    _check_envelope(obj)
    return obj


def decode_body_fast(body: bytes) -> dict[str, Any]:
    """:func:`decode_body` with the same result and checks, about five times faster.

    Bodies without characters >= U+E000 (where UTF-16 and code point key orders can differ) are
    parsed with orjson and accepted when orjson's sorted compact re-encoding equals the body
    byte for byte and no float or unsafe integer occurs (orjson's compact output is RFC 8785's
    for such values; tests/ledger pins this with hypothesis). Everything else, including every
    refusal, goes through :func:`decode_body` for its exact checks and message.
    """
    if body.isascii() or _HIGH_CHAR.search(body) is None:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            obj = None
        if (
            type(obj) is dict
            and orjson.dumps(obj, option=orjson.OPT_SORT_KEYS) == body
            and _plain(obj, 0)
            and _envelope_ok(obj)
        ):
            return obj
    return decode_body(body)


def _envelope_ok(obj: dict[str, Any]) -> bool:
    """The checks of :func:`_check_envelope` as one boolean, with valid kinds remembered."""
    v, seq, ts, kind = obj.get("v"), obj.get("seq"), obj.get("ts"), obj.get("kind")
    return (
        type(v) is int
        and v == FORMAT_VERSION
        and type(seq) is int
        and seq >= FIRST_SEQ
        and type(ts) is str
        and _TS_RE.match(ts) is not None
        and (kind in _VALID_KINDS or _remember_kind(kind))
    )


def _remember_kind(kind: Any) -> bool:
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        return False
    if len(_VALID_KINDS) < 1024:
        _VALID_KINDS.add(kind)
    return True


_VALID_KINDS: set[str] = set()


def _plain(value: Any, depth: int) -> bool:
    """True when ``value`` holds no float, no integer outside ±(2**53-1), no nesting past 32."""
    if depth > MAX_DEPTH:
        return False
    items = value.values() if type(value) is dict else value
    for item in items:
        kind = type(item)
        if kind is int:
            if not -MAX_SAFE_INT <= item <= MAX_SAFE_INT:
                return False
        elif kind is dict or kind is list:
            if not _plain(item, depth + 1):
                return False
        elif kind is float:
            return False
    return True


def _refuse_number(text: str) -> Any:
    raise ValueError(f"non-integer number {text}")


def _safe_int(text: str) -> int:
    value = int(text)
    if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        raise ValueError("integer outside ±(2**53-1)")
    return value


_DECODER = json.JSONDecoder(
    parse_float=_refuse_number, parse_constant=_refuse_number, parse_int=_safe_int
)
_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))
_HIGH_CHAR = re.compile(rb"[\xee-\xf4]")


def _check_envelope(obj: Any) -> None:
    if not isinstance(obj, dict):
        raise LedgerError("body is not a JSON object")
    if obj.get("v") != FORMAT_VERSION or isinstance(obj.get("v"), bool):
        raise LedgerError(f"body version {obj.get('v')!r} is not {FORMAT_VERSION}")
    seq, ts, kind = obj.get("seq"), obj.get("ts"), obj.get("kind")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < FIRST_SEQ:
        raise LedgerError(f"body seq {seq!r} is not a non-negative integer")
    if not isinstance(ts, str) or not _TS_RE.match(ts):
        raise LedgerError(f"body ts {ts!r} is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise LedgerError(f"body kind {kind!r} is not valid")
