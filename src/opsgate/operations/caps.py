"""Output caps that fit the answer: each request's ``max_tokens`` is computed from the operation's
answer schema and the given input (issue 16, item 3; docs/budgets.md, "Output caps").

The cap bounds the longest answer the schema allows, every field filled at once:

- **Structure** — braces, brackets, keys, quotes, separators, one whitespace run per member (a
  pretty-printed answer), enum values, numbers (:data:`NUMBER_CHARS`, an integer with a
  ``maximum`` by its digits), booleans — counted at **one token per character**. These are ASCII
  characters, and no tokenizer of the three providers emits a token shorter than one byte.
- **Free text** — every string's ``maxLength`` characters, at :data:`LATIN_CHARS_PER_TOKEN`
  characters per token when every letter of the prompt (system and user text) is a Latin letter,
  else at :data:`OTHER_CHARS_PER_TOKEN` (an answer is written in the language of what the model
  reads: the prompts say so for replies, and a non-Latin letter anywhere in the prompt takes the
  slower rate; so does an answer language the input names, unless it is one of
  :data:`LATIN_LANGUAGES`). The providers document about 4 characters of English per token (Gemini: "about
  4 characters"; OpenAI-compatible tokenizers likewise) and DeepSeek 0.3 tokens per English and
  0.6 per Chinese character; 2 and 1 leave 1.67x over the least favourable of those figures.
- **Framing** — :data:`FRAMING_TOKENS` for what a provider counts as output around the JSON (an
  Anthropic ``tool_use`` block's name and wrapper).
- **Ceiling** — at most :data:`MAX_ANSWER_TOKENS`, the largest output the built-in chain's
  smallest models produce (DeepSeek's ``max_tokens`` range is 1..8,192, Gemini 2.0 Flash's output
  limit 8,192): a longer answer could not be produced by every target, and DeepSeek refuses a
  larger ``max_tokens`` with 422.

Lists count ``maxItems`` items, or fewer where the input bounds them (``items``: an operation that
lists *n* computed things for the model to pick from passes ``n``; a valid answer refers to each at
most once). A string without ``maxLength`` has no bound and is refused (:class:`UnboundedAnswer`).

The cap is not what keeps a budget safe — a provider bills at most ``max_tokens`` of output, and the
reservation holds ``max_tokens`` — it decides which answers fit. An answer that still hits it stops
with finish reason ``length``: cut JSON is a malformed answer (billed as reported, then the next
target), a cut Anthropic tool input fails the schema (one repair request, then 502
``provider_bad_response``); every further request is admitted and reserved first.
"""

from __future__ import annotations

import functools
import math
import unicodedata
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

LATIN_CHARS_PER_TOKEN = 2
OTHER_CHARS_PER_TOKEN = 1
FRAMING_TOKENS = 50
MAX_ANSWER_TOKENS = 8_192
NUMBER_CHARS = 24
"""The longest JSON number a model writes for an unbounded ``number`` (``-1.2345678901234567e-308``)."""
INTEGER_CHARS = 20
"""An unbounded ``integer``: a signed 64-bit value's digits and sign."""
MEMBER_CHARS = 2
"""Per object member or list item besides its key: the separating comma and one whitespace run."""
LATIN_LANGUAGES = frozenset({
    "af", "ca", "cs", "cy", "da", "de", "en", "es", "et", "eu", "fi", "fr", "ga", "gl", "hr", "hu",
    "id", "is", "it", "lt", "lv", "ms", "nb", "nl", "nn", "no", "pl", "pt", "ro", "sk", "sl", "sq",
    "sv", "sw", "tr",
})
"""BCP 47 primary language subtags written in the Latin script with few letters beyond Latin
Extended-A (Vietnamese, written with many stacked diacritics, is not among them)."""


class UnboundedAnswer(ValueError):
    """The answer schema has a string without ``maxLength`` or a list without ``maxItems``."""


def chars_per_token(prompt: str, language: str | None = None) -> int:
    """:data:`LATIN_CHARS_PER_TOKEN` when every letter of ``prompt`` is a Latin letter (digits,
    punctuation and symbols do not count) and ``language``, the answer's language when the input
    names one (a BCP 47 tag), is ``None`` or has its primary subtag in :data:`LATIN_LANGUAGES`;
    else :data:`OTHER_CHARS_PER_TOKEN`."""
    if language is not None and language.strip().lower().replace("_", "-").split("-")[0] not in LATIN_LANGUAGES:
        return OTHER_CHARS_PER_TOKEN
    if prompt.isascii():
        return LATIN_CHARS_PER_TOKEN
    for ch in set(prompt):
        if ch.isalpha() and not unicodedata.name(ch, "").startswith("LATIN"):
            return OTHER_CHARS_PER_TOKEN
    return LATIN_CHARS_PER_TOKEN


@functools.cache
def answer_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema, generated once per model (callers must not mutate it): pydantic
    builds it anew on every ``model_json_schema()``, which cost more than the rest of a call's
    preparation."""
    return model.model_json_schema()


def answer_cap(
    model: type[BaseModel], prompt: str, items: Mapping[str, int] | None = None, language: str | None = None
) -> int:
    """The ``max_tokens`` for an answer valid against ``model``'s JSON schema to a request whose
    system and user text is ``prompt``, written in ``language`` when the input names one (see the
    module doc). ``items`` caps list fields, at any level, by property name at fewer items than
    their ``maxItems`` (never more). Raises :class:`UnboundedAnswer`."""
    structure, text = _schema_bound(model, tuple(sorted((items or {}).items())))
    rate = chars_per_token(prompt, language)
    return min(MAX_ANSWER_TOKENS, FRAMING_TOKENS + structure + math.ceil(text / rate))


@functools.lru_cache(maxsize=1024)
def _schema_bound(model: type[BaseModel], items: tuple[tuple[str, int], ...]) -> tuple[int, int]:
    """``(structure characters, text characters)`` of the longest answer valid against
    ``model``'s schema with the list fields of ``items`` (``(name, count)`` pairs) capped: a
    function of the two alone (:func:`answer_schema` is made once per model), remembered rather
    than walked for every request (issue 21). Raises :class:`UnboundedAnswer`."""
    schema = answer_schema(model)
    return _Bound(schema, dict(items)).value(schema, "")


class _Bound:
    """Walks a pydantic JSON schema: each value's ``(structure characters, text characters)``."""

    def __init__(self, root: dict[str, Any], items: Mapping[str, int]) -> None:
        self._defs: dict[str, Any] = root.get("$defs", {})
        self._items = items

    def value(self, schema: dict[str, Any], name: str) -> tuple[int, int]:
        if "$ref" in schema:
            return self.value(self._defs[schema["$ref"].rsplit("/", 1)[-1]], name)
        if "enum" in schema:
            return max(len(str(v)) for v in schema["enum"]) + 2, 0
        kind = schema.get("type")
        if kind == "object":
            return self._object(schema)
        if kind == "array":
            return self._array(schema, name)
        if kind == "string":
            if "maxLength" not in schema:
                raise UnboundedAnswer(f"string {name or '(answer)'!r} has no maxLength")
            return 2, int(schema["maxLength"])
        if kind == "integer":
            return _integer_chars(schema), 0
        if kind == "number":
            return NUMBER_CHARS, 0
        if kind == "boolean":
            return len("false"), 0
        raise UnboundedAnswer(f"value {name!r} of type {kind!r} has no bound")

    def _object(self, schema: dict[str, Any]) -> tuple[int, int]:
        structure, text = 2, 0
        for key, sub in schema.get("properties", {}).items():
            s, t = self.value(sub, key)
            structure += len(key) + 4 + MEMBER_CHARS + s
            text += t
        return structure, text

    def _array(self, schema: dict[str, Any], name: str) -> tuple[int, int]:
        if "maxItems" not in schema:
            raise UnboundedAnswer(f"list {name!r} has no maxItems")
        count = min(int(schema["maxItems"]), self._items.get(name, schema["maxItems"]))
        s, t = self.value(schema.get("items", {}), name + "[]")
        return 2 + count * (s + MEMBER_CHARS), count * t


def _integer_chars(schema: dict[str, Any]) -> int:
    if "maximum" not in schema:
        return INTEGER_CHARS
    low = schema.get("minimum")
    widest = max(len(str(schema["maximum"])), len(str(low)) if low is not None else INTEGER_CHARS)
    return widest
