"""Canonical entries: what payloads are refused, canonical bytes equal RFC 8785, bodies decode."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from opsgate.ledger.entry import (
    MAX_SAFE_INT,
    canonical_json,
    clean_payload,
    decode_body,
    encode_body,
    format_ts,
    parse_ts,
)
from opsgate.ledger.errors import LedgerError

TS = "2026-11-30T06:01:02.123456Z"


@pytest.mark.parametrize(
    ("kind", "payload", "message"),
    [
        ("intent", {"cost": 1.5}, "payload.cost: floats are not allowed"),
        ("intent", {"x": float("nan")}, "payload.x: floats are not allowed"),
        ("intent", {"x": [1, {"y": float("inf")}]}, "payload.x[1].y: floats are not allowed"),
        ("intent", {1: "a"}, "key 1 is not a string"),
        ("intent", {"x": {2: "a"}}, "payload.x: key 2 is not a string"),
        ("intent", {"seq": 5}, "may not set envelope keys ['seq']"),
        ("intent", {"ts": "x", "v": 2}, "may not set envelope keys ['ts', 'v']"),
        ("intent", {"x": (1, 2)}, "payload.x: tuple is not a JSON value"),
        ("intent", {"x": b"raw"}, "payload.x: bytes is not a JSON value"),
        ("intent", {"x": MAX_SAFE_INT + 1}, "payload.x: integer outside"),
        ("intent", {"x": "\ud800"}, "payload.x: string is not valid Unicode"),
        ("intent", {"x": [{"\udc00": 1}]}, "payload.x[0]: string is not valid Unicode"),
        ("intent", {"x": {"y": [-MAX_SAFE_INT - 1]}}, "payload.x.y[0]: integer outside"),
        ("Intent", {}, "ledger kind 'Intent' must match"),
        ("", {}, "ledger kind '' must match"),
        ("intent", [], "ledger payload must be a dict, not list"),
    ],
)
def test_refused_payloads(kind: str, payload: object, message: str) -> None:
    with pytest.raises(LedgerError) as caught:
        clean_payload(kind, payload)  # type: ignore[arg-type]
    assert message in caught.value.detail


def test_deep_nesting_is_refused() -> None:
    deep: object = "leaf"
    for _ in range(40):
        deep = [deep]
    with pytest.raises(LedgerError, match="nested deeper than 32"):
        clean_payload("intent", {"x": deep})


def test_deep_nesting_of_objects_is_refused() -> None:
    deep: object = {"leaf": 1}
    for _ in range(40):
        deep = {"x": deep}
    with pytest.raises(LedgerError, match="nested deeper than 32"):
        clean_payload("intent", {"x": deep})


def test_clean_payload_returns_a_detached_copy() -> None:
    payload = {"policy": ["a/b"], "meta": {"n": 1}}
    copy = clean_payload("intent", payload)
    payload["policy"].append("c/d")
    payload["meta"]["n"] = 2
    assert copy == {"policy": ["a/b"], "meta": {"n": 1}}


def test_body_layout() -> None:
    body = encode_body(7, TS, "intent", {"request_id": "r1", "a": None, "z": [True, -3]})
    assert body == (
        b'{"a":null,"kind":"intent","request_id":"r1","seq":7,'
        b'"ts":"2026-11-30T06:01:02.123456Z","v":1,"z":[true,-3]}'
    )
    assert decode_body(body)["seq"] == 7


def test_timestamps_are_fixed_width_utc() -> None:
    east = timezone(timedelta(hours=2))
    assert format_ts(datetime(2026, 11, 30, 8, 1, 2, tzinfo=east)) == "2026-11-30T06:01:02.000000Z"
    assert parse_ts(TS) == datetime(2026, 11, 30, 6, 1, 2, 123456, tzinfo=UTC)
    with pytest.raises(LedgerError, match="timezone-aware"):
        format_ts(datetime(2026, 11, 30))
    with pytest.raises(LedgerError):
        parse_ts("2026-11-30T06:01:02Z")


def test_utf16_key_order_differs_from_code_point_order() -> None:
    """U+E000 sorts after U+1F600 in RFC 8785 (UTF-16: 0xE000 > 0xD83D), before it by code point."""
    body = canonical_json({"\ue000": 1, "\U0001f600": 2})
    assert body == '{"\U0001f600":2,"\ue000":1}'.encode()
    assert body == rfc8785.dumps({"\ue000": 1, "\U0001f600": 2})


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INT, max_value=MAX_SAFE_INT)
    | st.text(st.characters(blacklist_categories=("Cs",))),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",))), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_canonical_json_equals_rfc8785(value: object) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@given(st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",))).filter(
    lambda k: k not in {"v", "seq", "ts", "kind"}), json_values, max_size=5))
def test_bodies_round_trip(payload: dict[str, object]) -> None:
    body = encode_body(3, TS, "result", clean_payload("result", payload))
    assert decode_body(body) == {**payload, "v": 1, "seq": 3, "ts": TS, "kind": "result"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"kind":"intent","seq":1,"ts":"2026-11-30T06:01:02.123456Z","v":1,"x":9007199254740992}',
        b'{"kind":"intent","seq":1,"ts":"2026-11-30T06:01:02.123456Z","v":1,"x":NaN}',
        b'{"kind":"intent","kind":"intent","seq":1,"ts":"2026-11-30T06:01:02.123456Z","v":1}',
        b'{"kind":"intent","seq":-1,"ts":"2026-11-30T06:01:02.123456Z","v":1}',
        b'{"kind":"intent","seq":true,"ts":"2026-11-30T06:01:02.123456Z","v":1}',
        b'{"kind":"intent","seq":1,"ts":"2026-11-30T06:01:02.123456Z","v":1,"x":"\\ud800"}',
        b'{"kind":"intent","seq":1,"ts":"2026-11-30T06:01:02.123456Z","v":1,"x":-0}',
        b'[1]',
        b"\xfe\xff" + '{"v":1}'.encode("utf-16-be"),
    ],
)
def test_undecodable_bodies(body: bytes) -> None:
    with pytest.raises(LedgerError):
        decode_body(body)
