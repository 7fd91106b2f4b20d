"""Rollout plans from JSON or TOML: ``{"stages": [{"percentage": 5, "hours": 24}, ...],
"observation_hours": 48}`` (``seconds`` / ``observation_s`` are accepted instead of hours).

Rules: at least one stage; percentages strictly increasing within 1..100; every duration > 0 s and the
observation >= 0 s, each at most :data:`MAX_DURATION_S` (366 days) and a whole number of seconds
(``seconds`` / ``observation_s`` are integers; hours may be fractional if they make whole seconds,
e.g. 0.5). The API's ``plan`` and the CLI's plan files both go through :func:`parse_plan`. Raises :class:`~opsgate.rollout.errors.InvalidPlan` naming the broken rule.
"""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path
from typing import Any

import orjson

from opsgate.bodies import MAX_DEPTH, nesting_depth
from opsgate.rollout.controller import Plan, Stage
from opsgate.rollout.errors import InvalidPlan

MAX_DURATION_S = 366 * 24 * 3600
"""The longest stage or observation a plan may set: 366 days, in seconds."""


def parse_plan(data: dict[str, Any]) -> Plan:
    """A validated :class:`Plan` from a decoded plan document."""
    raw = data.get("stages")
    if not isinstance(raw, list) or not raw:
        raise InvalidPlan("a plan needs a non-empty list of stages")
    stages = tuple(Stage(_percentage(s), _seconds(s, "hours", "seconds", f"stages[{i}]."))
                   for i, s in enumerate(raw))
    if any(b.percentage <= a.percentage for a, b in itertools.pairwise(stages)):
        raise InvalidPlan("stage percentages must increase strictly")
    if any(s.seconds <= 0 for s in stages):
        raise InvalidPlan("every stage needs a duration above 0")
    observation = _seconds(data, "observation_hours", "observation_s", default=48 * 3600)
    if observation < 0:
        raise InvalidPlan("the observation cannot be negative")
    return Plan(stages, observation)


def load_plan(path: Path) -> Plan:
    """Read a plan file: ``.toml`` as TOML, anything else as JSON (orjson, nesting at most
    :data:`~opsgate.bodies.MAX_DEPTH` levels, the rule of every HTTP body). :class:`InvalidPlan`
    when the file cannot be read, is not UTF-8 text, is not valid TOML/JSON or nests deeper."""
    kind = path.suffix.lstrip(".") or "JSON"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPlan(f"{path.name} is not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    except OSError as exc:
        raise InvalidPlan(f"{path.name} cannot be read: {exc.strerror or type(exc).__name__}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else orjson.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise InvalidPlan(f"{path.name} is not valid {kind}: {exc}") from None
    except RecursionError:  # tomllib recurses per nested array or table
        raise InvalidPlan(f"{path.name} nests arrays and tables more than {MAX_DEPTH} levels deep") from None
    if nesting_depth(data) > MAX_DEPTH:
        raise InvalidPlan(f"{path.name} nests arrays and tables more than {MAX_DEPTH} levels deep")
    if not isinstance(data, dict):
        raise InvalidPlan("a plan is an object with a stages list")
    return parse_plan(data)


def _percentage(stage: Any) -> int:
    value = stage.get("percentage") if isinstance(stage, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
        raise InvalidPlan("each stage needs an integer percentage in 1..100")
    return value


def _seconds(obj: dict[str, Any], hours_key: str, seconds_key: str, where: str = "",
             default: int | None = None) -> int:
    """Whole seconds from ``obj[seconds_key]`` (an integer) or ``obj[hours_key]`` (a number of
    hours); ``where`` prefixes the key in messages (``"stages[0]."``)."""
    if seconds_key in obj:
        key, value, scale = seconds_key, obj[seconds_key], 1
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidPlan(f"{where}{key} must be an integer number of seconds")
    elif hours_key in obj:
        key, value, scale = hours_key, obj[hours_key], 3600
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise InvalidPlan(f"{where}{key} must be a number")
    elif default is not None:
        return default
    else:
        raise InvalidPlan(f"each stage needs {hours_key} or {seconds_key}")
    exact = value * scale
    if not abs(exact) <= MAX_DURATION_S:  # also refuses NaN and infinities
        raise InvalidPlan(f"{where}{key} must be at most 366 days ({MAX_DURATION_S} seconds)")
    seconds = round(exact)
    if abs(exact - seconds) > 1e-6:
        raise InvalidPlan(f"{where}{key} must be a whole number of seconds")
    return seconds
