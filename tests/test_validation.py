"""Validation messages: the rule is kept, a quoted submitted value is not."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, Field

from opsgate.errors import InvalidInput
from opsgate.validation import validated


class _Cat(BaseModel):
    type: Literal["cat"]


class _Dog(BaseModel):
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
