"""Golden vectors (tests/vectors/ledger_chain.json) for the v1 body and hash chain.

The vectors were produced by the reference below — a separate, minimal RFC 8785 serialiser and
``hashlib`` — and then frozen. The product's encoder, chain and writer must reproduce them byte
for byte; the reference must too, so neither side can drift unnoticed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from tests.ledger.ledger_helpers import ledger_rows

from opsgate.clock import ManualClock
from opsgate.ledger.entry import chain_hash, clean_payload, encode_body, parse_ts
from opsgate.ledger.verify import verify
from opsgate.ledger.writer import Ledger

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "ledger_chain.json"
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def ref_jcs(value: Any) -> str:
    """RFC 8785 §3.2 for null, booleans, safe integers, strings, arrays and objects."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + "".join(
            _ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 else c) for c in value
        ) + '"'
    if isinstance(value, list):
        return "[" + ",".join(ref_jcs(v) for v in value) + "]"
    keys = sorted(value, key=lambda k: k.encode("utf-16-be"))  # §3.2.3: UTF-16 code units
    return "{" + ",".join(f"{ref_jcs(k)}:{ref_jcs(value[k])}" for k in keys) + "}"


def ref_chain(inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bodies and hashes for ``inputs`` (``ts``, ``kind``, ``payload``) as seqs 0, 1, ..."""
    prev, out = bytes(32), []
    for seq, item in enumerate(inputs):
        body = ref_jcs({"v": 1, "seq": seq, "ts": item["ts"], "kind": item["kind"],
                        **item["payload"]}).encode("utf-8")
        entry_hash = hashlib.sha256(b"opsgate.ledger.v1.chain\x00" + prev + body).digest()
        out.append({**item, "seq": seq, "body": body.decode("utf-8"), "prev_hash": prev.hex(),
                    "entry_hash": entry_hash.hex()})
        prev = entry_hash
    return out


def load() -> list[dict[str, Any]]:
    return json.loads(VECTORS.read_text(encoding="utf-8"))["entries"]


def test_reference_reproduces_the_frozen_vectors() -> None:
    vectors = load()
    inputs = [{k: v[k] for k in ("ts", "kind", "payload")} for v in vectors]
    assert ref_chain(inputs) == vectors
    assert len(vectors) == 5 and vectors[0]["prev_hash"] == "00" * 32


def test_encoder_and_chain_reproduce_the_vectors() -> None:
    for v in load():
        body = encode_body(v["seq"], v["ts"], v["kind"], clean_payload(v["kind"], v["payload"]))
        assert body == v["body"].encode("utf-8")
        assert chain_hash(bytes.fromhex(v["prev_hash"]), body).hex() == v["entry_hash"]


def test_writer_stores_exactly_the_vector_rows(engine: Engine) -> None:
    vectors = load()
    clock = ManualClock(parse_ts(vectors[0]["ts"]))
    ledger = Ledger(engine, clock)
    ledger.start()
    try:
        for v in vectors:
            clock.advance((parse_ts(v["ts"]) - clock.now()).total_seconds())
            appended = ledger.append_sync(v["kind"], v["payload"])
            assert (appended.seq, appended.entry_hash.hex()) == (v["seq"], v["entry_hash"])
    finally:
        ledger.close()
    assert ledger_rows(engine) == [
        (v["seq"], bytes.fromhex(v["prev_hash"]), bytes.fromhex(v["entry_hash"]),
         v["body"].encode("utf-8"))
        for v in vectors
    ]
    report = verify(engine)
    assert report.ok and report.head_hash.hex() == vectors[-1]["entry_hash"]
    assert report.incomplete_intents == 0
