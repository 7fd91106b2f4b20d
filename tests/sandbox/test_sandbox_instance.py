"""instance_for builds a schema-valid instance for the schemas pydantic and Gemini produce."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Annotated, Any, Literal

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, TypeAdapter

from opsgate.sandbox import UnsupportedSchemaError, instance_for


class Priority(enum.Enum):
    HIGH = "high"
    LOW = "low"


class Attendee(BaseModel):
    email: Annotated[str, Field(json_schema_extra={"format": "email"})]
    optional: bool = False


class Slot(BaseModel):
    start: dt.datetime
    end: dt.datetime
    day: dt.date


class Meeting(BaseModel):
    title: str = Field(min_length=20, max_length=40)
    attendees: list[Attendee] = Field(min_length=2, max_length=5)
    slots: list[Slot]
    priority: Priority
    kind: Literal["call", "visit"]
    score: float = Field(gt=0, lt=1)
    minutes: int = Field(ge=15, le=120, multiple_of=15)
    tags: set[str] = Field(min_length=3)
    notes: str | None = None
    id: uuid.UUID


class Node(BaseModel):
    label: str
    children: list[Node] = []
    parent: Node | None = None


class Cat(BaseModel):
    pet: Literal["cat"]
    lives: int = Field(ge=1, le=9)


class Dog(BaseModel):
    pet: Literal["dog"]
    good: bool


class Owner(BaseModel):
    pet: Cat | Dog = Field(discriminator="pet")
    nicknames: dict[str, int] = Field(min_length=1)
    pair: tuple[int, str]


@pytest.mark.parametrize("model", [Meeting, Node, Owner, Attendee])
def test_pydantic_schemas_get_valid_instances(model: type[BaseModel]) -> None:
    schema = model.model_json_schema()
    value = instance_for(schema)
    jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
    model.model_validate(value)


def test_instances_are_deterministic() -> None:
    schema = Meeting.model_json_schema()
    assert instance_for(schema) == instance_for(schema)


def test_constraints_are_honoured_exactly() -> None:
    value = instance_for(Meeting.model_json_schema())
    assert 20 <= len(value["title"]) <= 40
    assert len(value["attendees"]) == 2
    assert value["minutes"] == 15
    assert 0 < value["score"] < 1
    assert len(set(value["tags"])) == 3
    assert value["priority"] == "high"
    assert dt.datetime.fromisoformat(value["slots"][0]["start"]).tzinfo is not None


def test_gemini_openapi_subset_with_upper_case_types() -> None:
    schema = {
        "type": "OBJECT",
        "properties": {
            "label": {"type": "STRING", "format": "enum", "enum": ["spam", "ham"]},
            "confidence": {"type": "NUMBER", "minimum": 0.5, "maximum": 0.75},
            "count": {"type": "INTEGER", "minimum": "3"},
            "why": {"type": "STRING", "nullable": True},
            "words": {"type": "ARRAY", "items": {"type": "STRING"}, "minItems": "2"},
        },
        "required": ["label", "confidence", "count", "words"],
        "propertyOrdering": ["label", "confidence", "count", "why", "words"],
    }
    value = instance_for(schema)
    assert value == {
        "label": "spam",
        "confidence": 0.5,
        "count": 3,
        "why": "sandbox",
        "words": ["sandbox", "sandbox"],
    }


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "integer", "exclusiveMinimum": 5}, 6),
        ({"type": "integer", "maximum": -3}, -3),
        ({"type": "integer", "exclusiveMaximum": 0, "multipleOf": 4}, -4),
        ({"type": "number", "exclusiveMinimum": 0.1, "exclusiveMaximum": 0.2}, 0.15),
        ({"type": "number", "minimum": 10, "multipleOf": 2.5}, 10),
        (
            {
                "$schema": "http://json-schema.org/draft-04/schema#",
                "type": "integer",
                "minimum": 3,
                "exclusiveMinimum": True,
            },
            4,
        ),
        ({"type": "string", "minLength": 9, "maxLength": 9}, "sandboxxx"),
        ({"type": "string", "maxLength": 3}, "san"),
        ({"type": "string", "pattern": "^[0-9]+$"}, "0"),
        ({"type": "string", "format": "date"}, "2025-01-01"),
        ({"type": ["null", "integer"]}, 1),
        ({"const": {"fixed": True}}, {"fixed": True}),
        (
            {
                "allOf": [
                    {"$ref": "#/$defs/A"},
                    {"required": ["b"], "properties": {"b": {"type": "boolean"}}},
                ],
                "$defs": {
                    "A": {
                        "type": "object",
                        "properties": {"a": {"type": "integer"}},
                        "required": ["a"],
                    }
                },
            },
            {"a": 1, "b": True},
        ),
        ({"type": "array", "items": {"type": "integer"}, "maxItems": 0}, []),
    ],
)
def test_keyword_edge_cases(schema: dict[str, Any], expected: Any) -> None:
    value = instance_for(schema)
    assert value == expected
    jsonschema.validate(value, schema)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "^zz[a-f]{40}$"},
        {"$ref": "https://example.com/schema.json"},
        {"type": "integer", "minimum": 1, "maximum": 0},
        {"type": "TYPE_UNSPECIFIED"},
        {
            "$ref": "#/$defs/Loop",
            "$defs": {
                "Loop": {
                    "type": "object",
                    "required": ["next"],
                    "properties": {"next": {"$ref": "#/$defs/Loop"}},
                }
            },
        },
    ],
)
def test_unsatisfiable_schemas_raise(schema: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedSchemaError):
        instance_for(schema)


# Random JSON schemas built from the keywords instance_for supports.
_scalars = st.one_of(
    st.builds(
        lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
        st.integers(-1000, 1000),
        st.integers(0, 50),
    ),
    st.builds(
        lambda lo, span, mul: {
            "type": "integer",
            "minimum": lo,
            "maximum": lo + span * mul,
            "multipleOf": mul,
        },
        st.integers(-100, 100),
        st.integers(1, 5),
        st.integers(1, 7),
    ),
    st.builds(
        lambda lo, span: {"type": "number", "exclusiveMinimum": lo, "exclusiveMaximum": lo + span},
        st.floats(-1e3, 1e3, allow_nan=False),
        st.floats(0.001, 10),
    ),
    st.builds(
        lambda lo, extra: {"type": "string", "minLength": lo, "maxLength": lo + extra},
        st.integers(0, 30),
        st.integers(0, 5),
    ),
    st.sampled_from(
        [{"type": "string", "format": f} for f in ("date-time", "date", "email", "uuid")]
    ),
    st.lists(st.text(max_size=5), min_size=1, max_size=4, unique=True).map(lambda e: {"enum": e}),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
)


def _extend(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    props = st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), children, max_size=4)
    objects = props.flatmap(
        lambda p: st.builds(
            lambda req: {
                "type": "object",
                "properties": p,
                "required": sorted(req),
                "additionalProperties": False,
            },
            st.sets(st.sampled_from(sorted(p)) if p else st.nothing(), max_size=len(p)),
        )
    )
    arrays = st.builds(
        lambda item, lo, extra: {
            "type": "array",
            "items": item,
            "minItems": lo,
            "maxItems": lo + extra,
        },
        children,
        st.integers(0, 3),
        st.integers(0, 2),
    )
    unions = st.lists(children, min_size=1, max_size=3).map(lambda bs: {"anyOf": bs})
    nullable = children.map(lambda c: {"anyOf": [c, {"type": "null"}]})
    return st.one_of(objects, arrays, unions, nullable)


_schemas = st.recursive(_scalars, _extend, max_leaves=12)


@given(_schemas)
@settings(max_examples=300, deadline=None)
def test_random_schemas_get_valid_instances(schema: dict[str, Any]) -> None:
    value = instance_for(schema)
    jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())


@given(_schemas)
@settings(max_examples=100, deadline=None)
def test_random_schemas_behind_refs(schema: dict[str, Any]) -> None:
    wrapped = {
        "type": "object",
        "properties": {"x": {"$ref": "#/$defs/X"}},
        "required": ["x"],
        "$defs": {"X": schema},
    }
    jsonschema.validate(instance_for(wrapped), wrapped)


def test_type_adapter_schemas() -> None:
    for annotation in (list[dt.date], dict[str, list[int]], tuple[int, ...], Literal[1, 2] | None):
        schema = TypeAdapter(annotation).json_schema()
        jsonschema.validate(instance_for(schema), schema)
