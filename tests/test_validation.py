"""Validation messages: the rule is kept, a quoted submitted value is not."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from opsgate.errors import InvalidInput
from opsgate.testing import GovernedGateway
from opsgate.validation import validated


class _Cat(BaseModel):
    type: Literal["cat"]


class _Dog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["dog"]


class _Shape(BaseModel):
    mode: str = Field(default="refuse", pattern="^(refuse|cheaper)$")
    kind: Literal["alpha", "beta"] = "alpha"
    pet: _Cat | _Dog = Field(default=_Cat(type="cat"), discriminator="type")


def _errors(data: dict[str, object]) -> list[dict[str, str]]:
    with pytest.raises(InvalidInput) as caught:
        validated(_Shape, data)
    return caught.value.errors


def test_a_value_inside_the_rules_own_text_keeps_the_message() -> None:
    assert _errors({"mode": "cheap", "kind": "alph"}) == [
        {"loc": "mode", "msg": "String should match pattern '^(refuse|cheaper)$'"},
        {"loc": "kind", "msg": "Input should be 'alpha' or 'beta'"},
    ]


def test_a_message_quoting_the_submitted_value_is_replaced_by_the_rule() -> None:
    errors = _errors({"pet": {"type": "sk-secret-value"}})
    assert errors == [{"loc": "pet", "msg": "rule: union_tag_invalid"}]


class _Labelled(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pet: _Cat | _Dog = Field(default=_Cat(type="cat"), discriminator="type")
    labels: dict[str, int] = {}
    tags: list[str] = []


SSN_KEY = "SSN 123-45-6789 of John Smith"


def _labelled_errors(data: dict[str, object]) -> list[dict[str, str]]:
    with pytest.raises(InvalidInput) as caught:
        validated(_Labelled, data)
    assert "123-45-6789" not in repr(caught.value.errors) + caught.value.detail
    return caught.value.errors


def test_an_unknown_key_is_refused_at_a_fixed_location_without_repeating_it() -> None:
    assert _labelled_errors({SSN_KEY: 1, "tags": ["a", 2]}) == [
        {"loc": "tags.1", "msg": "Input should be a valid string"},
        {"loc": "*", "msg": "Extra inputs are not permitted"},
    ]


def test_a_dict_fields_keys_and_a_nested_unknown_key_are_not_named_but_schema_names_are() -> None:
    assert _labelled_errors({"labels": {SSN_KEY: "x"}, "pet": {"type": "dog", SSN_KEY: 1}}) == [
        {"loc": "pet.dog.*", "msg": "Extra inputs are not permitted"},
        {"loc": "labels.*", "msg": "Input should be a valid integer, unable to parse string as an integer"},
    ]


async def test_an_operations_422_does_not_echo_a_submitted_key(governed: GovernedGateway) -> None:
    with pytest.raises(InvalidInput) as caught:
        await governed.govern("email-classify", {SSN_KEY: 1, "raw": "x"})
    assert caught.value.errors == [{"loc": "*", "msg": "Extra inputs are not permitted"}]
