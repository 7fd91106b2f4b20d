"""Rollout plans from JSON or TOML: ``{"stages": [{"percentage": 5, "hours": 24}, ...],
"observation_hours": 48}`` (``seconds`` / ``observation_s`` are accepted instead of hours).

Rules: at least one stage; percentages strictly increasing within 1..100; every duration > 0 s and the
observation >= 0 s. Raises :class:`~opsgate.rollout.errors.InvalidPlan` naming the broken rule.
"""

from __future__ import annotations

import itertools
import json
import tomllib
from pathlib import Path
from typing import Any

from opsgate.rollout.controller import Plan, Stage
from opsgate.rollout.errors import InvalidPlan


def parse_plan(data: dict[str, Any]) -> Plan:
    """A validated :class:`Plan` from a decoded plan document."""
    raw = data.get("stages")
    if not isinstance(raw, list) or not raw:
        raise InvalidPlan("a plan needs a non-empty list of stages")
    stages = tuple(Stage(_percentage(s), _seconds(s, "hours", "seconds")) for s in raw)
    if any(b.percentage <= a.percentage for a, b in itertools.pairwise(stages)):
        raise InvalidPlan("stage percentages must increase strictly")
    if any(s.seconds <= 0 for s in stages):
        raise InvalidPlan("every stage needs a duration above 0")
    observation = _seconds(data, "observation_hours", "observation_s", default=48 * 3600)
    if observation < 0:
        raise InvalidPlan("the observation cannot be negative")
    return Plan(stages, observation)


def load_plan(path: Path) -> Plan:
    """Read a plan file: ``.toml`` as TOML, anything else as JSON."""
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise InvalidPlan(f"{path.name} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidPlan("a plan is an object with a stages list")
    return parse_plan(data)


def _percentage(stage: Any) -> int:
    value = stage.get("percentage") if isinstance(stage, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
        raise InvalidPlan("each stage needs an integer percentage in 1..100")
    return value


def _seconds(obj: dict[str, Any], hours_key: str, seconds_key: str, default: int | None = None) -> int:
    if seconds_key in obj:
        value = obj[seconds_key]
        scale = 1
    elif hours_key in obj:
        value = obj[hours_key]
        scale = 3600
    elif default is not None:
        return default
    else:
        raise InvalidPlan(f"each stage needs {hours_key} or {seconds_key}")
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidPlan(f"{hours_key}/{seconds_key} must be a number")
    return round(value * scale)
