"""inline_refs and to_gemini_schema on pydantic v2 schemas and hand-written JSON Schemas.

The Gemini output is checked against the google-genai SDK's own ``Schema`` model (extra fields
forbidden), which pins it to the fields Gemini's responseSchema accepts."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Literal

import jsonschema
import pytest
from google.genai import types as genai_types
from pydantic import BaseModel, Field

from opsgate.providers.schema import inline_refs, to_gemini_schema


class Priority(str, Enum):
    HIGH = "high"
    LOW = "low"


class Attendee(BaseModel):
    """Someone at the meeting."""

    email: str = Field(json_schema_extra={"format": "email"})
    optional: bool = False


class Prep(BaseModel):
    title: str = Field(min_length=1, max_length=120, description="Meeting title")
    starts_at: datetime
    organizer: Attendee | None = Field(default=None, description="Who called it")
    attendees: list[Attendee] = Field(min_length=1, max_length=50)
    priority: Priority
    kind: Literal["prep"]
    confidence: float = Field(ge=0, le=1)
    notes: str | None = None
    duration: int | str


PREP_SCHEMA = Prep.model_json_schema()
INSTANCE = {
    "title": "Quarterly review",
    "starts_at": "2026-03-02T09:00:00Z",
    "organizer": {"email": "ana@example.org", "optional": False},
    "attendees": [{"email": "bo@example.org"}],
    "priority": "high",
    "kind": "prep",
    "confidence": 0.8,
    "notes": None,
    "duration": 30,
}


def test_inline_refs_resolves_pydantic_defs_and_drops_them() -> None:
    inlined = inline_refs(PREP_SCHEMA)
    assert "$defs" not in inlined
    assert "$ref" not in repr(inlined)
    organizer = inlined["properties"]["organizer"]
    assert organizer["description"] == "Who called it"
    assert organizer["anyOf"][0]["properties"]["email"] == {
        "format": "email",
        "title": "Email",
        "type": "string",
    }
    assert organizer["anyOf"][1] == {"type": "null"}
    assert inlined["properties"]["priority"]["enum"] == ["high", "low"]
    assert inlined["properties"]["attendees"]["items"]["title"] == "Attendee"
    assert PREP_SCHEMA["$defs"]["Attendee"]["title"] == "Attendee"  # input untouched


def test_inlined_schema_accepts_and_rejects_the_same_instances() -> None:
    inlined = inline_refs(PREP_SCHEMA)
    jsonschema.validate(INSTANCE, PREP_SCHEMA)
    jsonschema.validate(INSTANCE, inlined)
    bad = {**INSTANCE, "attendees": [{"optional": True}]}
    for schema in (PREP_SCHEMA, inlined):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_ref_siblings_win_over_the_definition() -> None:
    schema = {
        "definitions": {"Name": {"type": "string", "description": "a name"}},
        "type": "object",
        "properties": {"who": {"$ref": "#/definitions/Name", "description": "the sender"}},
    }
    assert inline_refs(schema) == {
        "type": "object",
        "properties": {"who": {"type": "string", "description": "the sender"}},
    }


def test_recursive_and_dangling_refs_are_refused() -> None:
    class Node(BaseModel):
        children: list[Node]

    with pytest.raises(ValueError, match="recursive"):
        inline_refs(Node.model_json_schema())
    with pytest.raises(ValueError, match="no definition"):
        inline_refs({"$ref": "#/$defs/Missing"})
    with pytest.raises(ValueError, match="not a local definition"):
        inline_refs({"$ref": "https://example.org/schema.json"})


def test_pydantic_schema_becomes_gemini_openapi_subset() -> None:
    gemini = to_gemini_schema(PREP_SCHEMA)
    genai_types.Schema.model_validate(gemini)  # extra="forbid": only fields Gemini knows
    attendee = {
        "type": "OBJECT",
        "description": "Someone at the meeting.",
        "properties": {"email": {"type": "STRING"}, "optional": {"type": "BOOLEAN"}},
        "required": ["email"],
        "propertyOrdering": ["email", "optional"],
    }
    assert gemini == {
        "type": "OBJECT",
        "properties": {
            "title": {"type": "STRING", "description": "Meeting title"},
            "starts_at": {"type": "STRING", "format": "date-time"},
            "organizer": {**attendee, "description": "Who called it", "nullable": True},
            "attendees": {"type": "ARRAY", "items": attendee, "minItems": 1, "maxItems": 50},
            "priority": {"type": "STRING", "enum": ["high", "low"]},
            "kind": {"type": "STRING", "enum": ["prep"]},
            "confidence": {"type": "NUMBER", "minimum": 0, "maximum": 1},
            "notes": {"type": "STRING", "nullable": True},
            "duration": {"anyOf": [{"type": "INTEGER"}, {"type": "STRING"}]},
        },
        "required": [
            "title",
            "starts_at",
            "attendees",
            "priority",
            "kind",
            "confidence",
            "duration",
        ],
        "propertyOrdering": [
            "title",
            "starts_at",
            "organizer",
            "attendees",
            "priority",
            "kind",
            "confidence",
            "notes",
            "duration",
        ],
    }


def test_hand_written_schema_edge_cases() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "code": {"type": ["integer", "null"], "format": "int64", "exclusiveMinimum": 0},
            "level": {"type": "integer", "enum": [1, 2, 3]},
            "tags": {
                "type": "array",
                "items": {"type": "string", "pattern": "^[a-z]+$"},
                "uniqueItems": True,
            },
            "meta": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "required": ["code", "ghost"],
        "propertyOrdering": ["tags", "code", "gone"],
    }
    gemini = to_gemini_schema(schema)
    genai_types.Schema.model_validate(gemini)
    assert gemini == {
        "type": "OBJECT",
        "properties": {
            "code": {"type": "INTEGER", "format": "int64", "nullable": True},
            "level": {"type": "INTEGER"},
            "tags": {"type": "ARRAY", "items": {"type": "STRING"}},
            "meta": {"type": "OBJECT"},
        },
        "required": ["code"],
        "propertyOrdering": ["tags", "code"],
    }
