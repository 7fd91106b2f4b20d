"""Output caps that fit the answer (operations/caps.py, issue 16 item 3): each request's max_tokens
is computed from the answer schema and the input; the longest valid answer fits under it."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from opsgate.operations import OPERATIONS
from opsgate.operations.caps import (
    FRAMING_TOKENS,
    LATIN_CHARS_PER_TOKEN,
    MAX_ANSWER_TOKENS,
    UnboundedAnswer,
    answer_cap,
    answer_schema,
    chars_per_token,
)
from opsgate.operations.common import Answer
from opsgate.operations.email import DRAFT_LIMITS
from opsgate.operations.io import input_from_file
from tests.operations.test_ops_contract import IDS, example

# The caps the nine examples of examples/ get (Latin prompts), under the answer limits of issue 16
# (a classification's reason 200 characters, short summaries and narratives 600-1,200, a draft of
# the default length "medium" 1,500 characters and 3 open questions, ...).
EXAMPLE_CAPS = {
    "email-compose": 1447, "email-classify": 279, "email-respond": 1332, "calendar-prep": 7790,
    "calendar-time": 1121, "task-prioritize": 1268, "task-breakdown": 2253,
    "analytics-summary": 1283, "analytics-anomaly": 1216,
}
# A draft's cap per requested length (short, medium, long) for the examples (Latin prompts).
LENGTH_CAPS = {"email-respond": (728, 1332, 4890), "email-compose": (843, 1447, 5005)}


def _prepared(op_id: str, **options: Any):  # type: ignore[no-untyped-def]  # Prepared of any operation
    op = OPERATIONS[op_id]
    return op.prepare(op.Input.model_validate(input_from_file(op_id, example(op_id), options)))


def _longest(schema: dict[str, Any], node: dict[str, Any], items: dict[str, int], name: str = "") -> Any:
    """The longest answer ``node`` allows: strings at maxLength (Latin text), lists at their bound."""
    if "$ref" in node:
        return _longest(schema, schema["$defs"][node["$ref"].rsplit("/", 1)[-1]], items, name)
    if "enum" in node:
        return max(node["enum"], key=lambda v: len(str(v)))
    kind = node["type"]
    if kind == "object":
        return {key: _longest(schema, sub, items, key) for key, sub in node["properties"].items()}
    if kind == "array":
        count = min(node["maxItems"], items.get(name, node["maxItems"]))
        return [_longest(schema, node["items"], items, name + "[]") for _ in range(count)]
    if kind == "string":
        return ("Lorem ipsum dolor sit amet. " * 400)[: node["maxLength"]]
    if kind == "integer":
        return node.get("maximum", 2**63 - 1)
    if kind == "number":
        return 0.12345678901234566
    return False


@pytest.mark.parametrize("op_id", IDS)
def test_each_operations_cap_for_its_example(op_id: str) -> None:
    assert _prepared(op_id).request.max_tokens == EXAMPLE_CAPS[op_id]


@pytest.mark.parametrize("op_id", IDS)
def test_the_longest_valid_answer_fits_under_the_cap(op_id: str) -> None:
    """The answer with every string at its maxLength and every list at its input bound validates
    against the operation's schema, and its JSON pretty-printed (the longer form) counted by the
    rule (structure 1 token per character and per whitespace run of a newline and its indentation,
    text 1 per LATIN_CHARS_PER_TOKEN characters) plus the framing is at most the cap, unless the cap
    is the ceiling."""
    items = {"calendar-prep": {"items": 9}, "calendar-time": {"ranked": 12}, "task-prioritize": {"order": 6},
             "task-breakdown": {"subtasks": 8}, "analytics-anomaly": {"notes": 2}}.get(op_id, {})
    _assert_the_longest_answer_fits(op_id, _prepared(op_id), items)


def _assert_the_longest_answer_fits(op_id: str, prepared: Any, items: dict[str, int]) -> dict[str, Any]:
    """The longest answer of ``prepared``'s answer model validates and fits its cap (see above)."""
    model = OPERATIONS[op_id].answer_model(prepared)
    answer = _longest(answer_schema(model), answer_schema(model), items)
    model.model_validate(answer)
    text = sum(len(s) for s in _strings(answer))
    pretty = json.dumps(answer, indent=2)
    structure = len(json.dumps(answer, separators=(",", ": "))) - text + pretty.count("\n")
    needed = FRAMING_TOKENS + structure + math.ceil(text / LATIN_CHARS_PER_TOKEN)
    cap = prepared.request.max_tokens
    assert needed <= cap or cap == MAX_ANSWER_TOKENS
    assert cap - needed < 0.2 * cap or cap == MAX_ANSWER_TOKENS  # a bound, not a round number far above it
    return answer


@pytest.mark.parametrize("op_id", sorted(LENGTH_CAPS))
@pytest.mark.parametrize("length", list(DRAFT_LIMITS))
def test_a_drafts_cap_follows_its_length(op_id: str, length: str) -> None:
    """Each length's limits are in the schema the model gets and in its prompt; its longest valid
    answer fits its cap within 20 %, and a body one character longer fails validation (a repair)."""
    prepared = _prepared(op_id, length=length)
    limit = DRAFT_LIMITS[length]
    schema = prepared.request.json_schema
    assert schema["properties"]["body"]["maxLength"] == limit.body_chars
    assert schema["properties"]["open_questions"]["maxItems"] == limit.questions
    assert f"Keep the body to at most about {limit.words} words." in prepared.request.system
    assert f"open_questions (at most {limit.questions})" in prepared.request.system
    assert prepared.request.max_tokens == LENGTH_CAPS[op_id][list(DRAFT_LIMITS).index(length)]
    longest = _assert_the_longest_answer_fits(op_id, prepared, {})
    with pytest.raises(ValidationError, match="at most"):
        OPERATIONS[op_id].answer_model(prepared).model_validate({**longest, "body": longest["body"] + "x"})


@pytest.mark.parametrize("op_id", sorted(LENGTH_CAPS))
def test_a_draft_is_medium_unless_asked_otherwise(op_id: str) -> None:
    default, medium = _prepared(op_id), _prepared(op_id, length="medium")
    assert (default.request.max_tokens, default.request.json_schema) == (
        medium.request.max_tokens, medium.request.json_schema)
    assert default.request.json_schema["properties"]["body"]["maxLength"] == 1_500
    assert OPERATIONS[op_id].Input.model_validate(input_from_file(op_id, example(op_id), None)).length == "medium"


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_list_bounds_follow_the_input() -> None:
    few = _prepared("task-breakdown", max_subtasks=2).request.max_tokens
    many = _prepared("task-breakdown", max_subtasks=12).request.max_tokens
    assert (few, many) == (999, 3089)
    one_slot = _prepared("calendar-time", max_slots=1).request.max_tokens
    assert one_slot == 529 < EXAMPLE_CAPS["calendar-time"]


def test_a_non_latin_prompt_takes_one_token_per_character() -> None:
    latin = answer_cap(OPERATIONS["email-classify"].ModelOutput, "Bonjour, ça va? 🙂 €5")
    cyrillic = answer_cap(OPERATIONS["email-classify"].ModelOutput, "Здравствуйте")
    assert (latin, cyrillic) == (279, 379)
    assert chars_per_token("naïve café ÆØÅ 12:00 — ok") == 2 and chars_per_token("日本語") == 1


def test_an_answer_language_the_input_names_sets_the_rate() -> None:
    """email-compose may be asked to write in another language than its English instructions."""
    caps = {tag: _prepared("email-compose", language=tag).request.max_tokens for tag in ("en", "de-AT", "ja", "vi")}
    assert caps == {"en": 1447, "de-AT": 1447, "ja": 2764, "vi": 2764}
    long = {tag: _prepared("email-compose", language=tag, length="long").request.max_tokens for tag in ("en", "ja")}
    assert long == {"en": 5005, "ja": 8192}
    assert (chars_per_token("Hello", "pt_BR"), chars_per_token("Hello", "Japanese")) == (2, 1)


def test_the_cap_never_exceeds_the_smallest_models_output_limit() -> None:
    assert answer_cap(OPERATIONS["email-respond"].ModelOutput, "Ответ") == MAX_ANSWER_TOKENS == 8192
    assert answer_cap(OPERATIONS["email-respond"].ModelOutput, "Reply") == 4890


def test_an_unbounded_answer_has_no_cap() -> None:
    class Loose(Answer):
        text: str

    class Listing(Answer):
        names: list[str] = Field(max_length=3)

    class Fine(BaseModel):
        flag: bool
        score: int = Field(ge=0, le=100)

    with pytest.raises(UnboundedAnswer, match="'text' has no maxLength"):
        answer_cap(Loose, "x")
    with pytest.raises(UnboundedAnswer, match="'names\\[\\]' has no maxLength"):
        answer_cap(Listing, "x")
    # {"flag": false, "score": 100}: braces 2, members (4+4+2)+5 and (5+4+2)+3
    assert answer_cap(Fine, "x") == FRAMING_TOKENS + 2 + 15 + 14
