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

Room for a Merkle tree (a later issue)
    The stored body is also the RFC 9162 §2.1.1 leaf input: leaf index = ``seq``, leaf hash =
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
    Refused with LedgerError, with the offending path in the message: a non-dict payload, a non-str key, a reserved
    envelope key at top level, a float (including NaN and infinities) anywhere, an integer outside
    ±(2**53 - 1), a string that is not valid Unicode (lone surrogates), a tuple/set/bytes or any
    other type, nesting deeper than 32.
    """
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise LedgerError(f"ledger kind {kind!r} must match [a-z][a-z0-9_.-]{{0,63}}")
    if not isinstance(payload, dict):
        raise LedgerError(f"ledger payload must be a dict, not {type(payload).__name__}")
    reserved = ENVELOPE_KEYS.intersection(k for k in payload if isinstance(k, str))
    if reserved:
        raise LedgerError(f"ledger payload may not set envelope keys {sorted(reserved)}")
    return _clean(payload, "payload", 0)


def _clean(value: Any, path: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise LedgerError(f"{path}: nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise LedgerError(f"{path}: integer outside ±(2**53-1)")
        return value
    if isinstance(value, str):
        return _check_str(value, path)
    if isinstance(value, dict):
        return {
            _check_key(key, path): _clean(item, f"{path}.{key}", depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_clean(item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value)]
    if isinstance(value, float):
        raise LedgerError(f"{path}: floats are not allowed in ledger entries (use integers)")
    raise LedgerError(f"{path}: {type(value).__name__} is not a JSON value")


def _check_key(key: Any, path: str) -> str:
    if not isinstance(key, str):
        raise LedgerError(f"{path}: key {key!r} is not a string")
    return _check_str(key, path)


def _check_str(text: str, path: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise LedgerError(f"{path}: string is not valid Unicode") from None
    return text


def encode_body(seq: int, ts: str, kind: str, payload: dict[str, Any]) -> bytes:
    """The RFC 8785 bytes of ``{"v":1,"seq":seq,"ts":ts,"kind":kind,**payload}``.

    ``payload`` must come from :func:`clean_payload`; ``ts`` comes from :func:`format_ts`.
    """
    return rfc8785.dumps({**payload, "v": FORMAT_VERSION, "seq": seq, "ts": ts, "kind": kind})


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
        obj = json.loads(
            body.decode("utf-8"),
            parse_float=_refuse_number,
            parse_constant=_refuse_number,
            parse_int=_safe_int,
        )
        canonical = _canonical(obj, body)
    except (ValueError, UnicodeError, rfc8785.CanonicalizationError) as exc:
        raise LedgerError(f"body is not canonical JSON: {exc}") from None
    if canonical != body:
        raise LedgerError("body is not in RFC 8785 canonical form")
    _check_envelope(obj)
    return obj


def _canonical(obj: Any, body: bytes) -> bytes:
    """RFC 8785 bytes of ``obj``. Fast path: with no decoded character at or above U+E000 (no UTF-8
    lead byte >= 0xEE in ``body``), sorting keys by code point equals RFC 8785's UTF-16 order and
    Python's compact encoder escapes exactly what RFC 8785 escapes, for float-free values."""
    if max(body, default=0) >= 0xEE:
        return rfc8785.dumps(obj)
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def _refuse_number(text: str) -> Any:
    raise ValueError(f"non-integer number {text}")


def _safe_int(text: str) -> int:
    value = int(text)
    if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        raise ValueError("integer outside ±(2**53-1)")
    return value


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
