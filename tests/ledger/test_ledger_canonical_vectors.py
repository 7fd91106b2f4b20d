"""Canonicalisation vectors (tests/vectors/ledger_canonical.json): floats banned, UTF-16 key
order, no Unicode normalisation — for the writer's encoder, both decoders and ``rfc8785``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from opsgate.ledger.entry import clean_payload, decode_body, decode_body_fast, encode_body
from opsgate.ledger.errors import LedgerError

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "ledger_canonical.json").read_text()
)


@pytest.mark.parametrize("case", VECTORS["accepted"], ids=lambda c: c["name"])
def test_accepted_payloads_have_exact_bodies(case: dict) -> None:
    body = case["body"].encode("utf-8")
    payload = clean_payload("intent", case["payload"])
    assert encode_body(7, VECTORS["ts"], "intent", payload) == body
    obj = {**case["payload"], "v": 1, "seq": 7, "ts": VECTORS["ts"], "kind": "intent"}
    assert rfc8785.dumps(obj) == body
    assert decode_body(body) == decode_body_fast(body) == obj


@pytest.mark.parametrize("case", VECTORS["refused_payloads"], ids=lambda c: c["name"])
def test_refused_payloads(case: dict) -> None:
    with pytest.raises(LedgerError):
        clean_payload("intent", json.loads(case["json"]))


@pytest.mark.parametrize("case", VECTORS["refused_bodies"], ids=lambda c: c["name"])
def test_refused_bodies(case: dict) -> None:
    body = case["body"].encode("utf-8")
    for decode in (decode_body, decode_body_fast):
        with pytest.raises(LedgerError):
            decode(body)


_SAFE = st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1)
_VALUES = st.recursive(
    st.none() | st.booleans() | _SAFE | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300)
@given(st.dictionaries(st.text().filter(lambda k: k not in {"v", "seq", "ts", "kind"}), _VALUES,
                       max_size=6))
def test_fast_decoder_agrees_with_rfc8785(payload: dict) -> None:
    body = encode_body(3, "2026-11-30T06:01:02.123456Z", "intent", clean_payload("intent", payload))
    assert body == rfc8785.dumps({**payload, "v": 1, "seq": 3,
                                  "ts": "2026-11-30T06:01:02.123456Z", "kind": "intent"})
    assert decode_body_fast(body) == decode_body(body)
    spaced = b"{ " + body[1:]
    with pytest.raises(LedgerError):
        decode_body_fast(spaced)
