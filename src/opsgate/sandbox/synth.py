"""Deterministic answer text and token counts shared by the three provider sandboxes.

Token counts follow one documented rule so cost maths can be checked by hand: a text costs
``ceil(len(text.encode("utf-8")) / 4)`` tokens (at least 1 for a non-empty text, 0 for "").
"""

from __future__ import annotations

import math

BYTES_PER_TOKEN = 4
STREAM_CHUNK_CHARS = 24
"""Characters per streamed text delta (and per ``partial_json`` delta)."""


def count_tokens(text: str) -> int:
    """Tokens of ``text``: ceil(UTF-8 bytes / 4)."""
    return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN)


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix of ``text`` (whole characters) that costs at most ``max_tokens``."""
    budget = max(0, max_tokens) * BYTES_PER_TOKEN
    return text.encode("utf-8")[:budget].decode("utf-8", errors="ignore")


def reply_text(model: str, prompt: str) -> str:
    """The plain-text answer: names the model and echoes the start of the last user text."""
    gist = " ".join(prompt.split())[:80]
    return f"Sandbox answer from {model}. You said: {gist}"


def split_text(text: str, size: int = STREAM_CHUNK_CHARS) -> list[str]:
    """``text`` cut into consecutive pieces of ``size`` characters (``[]`` for "")."""
    return [text[i : i + size] for i in range(0, len(text), size)]
