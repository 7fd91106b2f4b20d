"""Plan durations: whole seconds within 366 days, from the API's plan object and from CLI plan files
alike (both go through :func:`parse_plan`); anything else is one InvalidPlan naming the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from opsgate.rollout.controller import Plan, Stage
from opsgate.rollout.errors import InvalidPlan
from opsgate.rollout.plans import MAX_DURATION_S, load_plan, parse_plan

TOO_LONG = "must be at most 366 days (31622400 seconds)"


@pytest.mark.parametrize(("plan", "message"), [
    ({"stages": [{"percentage": 5, "seconds": 1e300}]}, "stages[0].seconds must be an integer number of seconds"),
    ({"stages": [{"percentage": 5, "seconds": 1.5}]}, "stages[0].seconds must be an integer number of seconds"),
    ({"stages": [{"percentage": 5, "seconds": 9007199254740991}]}, f"stages[0].seconds {TOO_LONG}"),
    ({"stages": [{"percentage": 5, "seconds": 60}, {"percentage": 9, "seconds": MAX_DURATION_S + 1}]},
     f"stages[1].seconds {TOO_LONG}"),
    ({"stages": [{"percentage": 5, "hours": 1e20}]}, f"stages[0].hours {TOO_LONG}"),
    ({"stages": [{"percentage": 5, "hours": float("nan")}]}, f"stages[0].hours {TOO_LONG}"),
    ({"stages": [{"percentage": 5, "hours": 1.0000001}]}, "stages[0].hours must be a whole number of seconds"),
    ({"stages": [{"percentage": 5, "seconds": 60}], "observation_s": 10**20}, f"observation_s {TOO_LONG}"),
    ({"stages": [{"percentage": 5, "seconds": 60}], "observation_s": 0.5},
     "observation_s must be an integer number of seconds"),
    ({"stages": [{"percentage": 5, "seconds": 60}], "observation_hours": 1e300}, f"observation_hours {TOO_LONG}"),
])
def test_plan_durations_out_of_range_or_fractional_are_refused(plan: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidPlan) as refused:
        parse_plan(plan)
    assert str(refused.value) == message


def test_plan_durations_at_the_limit_and_whole_fractions_of_hours_are_kept() -> None:
    plan = parse_plan({"stages": [{"percentage": 5, "hours": 0.5}, {"percentage": 50, "seconds": MAX_DURATION_S}],
                       "observation_hours": 366 * 24})
    assert plan == Plan((Stage(5, 1800), Stage(50, 31_622_400)), 31_622_400)


def test_plan_files_get_the_same_check(tmp_path: Path) -> None:
    (tmp_path / "plan.json").write_text(json.dumps({"stages": [{"percentage": 5, "seconds": 1e20}]}))
    (tmp_path / "plan.toml").write_text("observation_s = 40000000\n[[stages]]\npercentage = 5\nseconds = 60\n")
    messages = []
    for name in ("plan.json", "plan.toml"):
        with pytest.raises(InvalidPlan) as refused:
            load_plan(tmp_path / name)
        messages.append(str(refused.value))
    assert messages == ["stages[0].seconds must be an integer number of seconds", f"observation_s {TOO_LONG}"]
