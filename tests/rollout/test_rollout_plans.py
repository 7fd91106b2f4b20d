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


@pytest.mark.parametrize(("name", "content", "message"), [
    ("bad.json", b"\xff\xfe", "bad.json is not UTF-8 text (byte 0 cannot be decoded)"),
    ("flood.json", b"[" * 100_000, "flood.json is not valid json: "),
    ("deep.json", b'{"stages": ' + b"[" * 40 + b"]" * 40 + b"}", "deep.json nests arrays and tables more than 32 levels deep"),
    ("deep.toml", b"stages = " + b"[" * 100_000, "deep.toml nests arrays and tables more than 32 levels deep"),
])
def test_a_plan_file_that_cannot_be_read_is_one_invalid_plan(tmp_path: Path, name: str, content: bytes,
                                                              message: str) -> None:
    """Tester-ops F8: non-UTF-8 bytes were a UnicodeDecodeError traceback; a JSON or TOML plan
    nested past Python's recursion limit was a RecursionError traceback."""
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InvalidPlan) as refused:
        load_plan(tmp_path / name)
    assert str(refused.value).startswith(message)


def test_opsgate_rollout_start_with_a_non_utf8_plan_is_one_line_and_exit_2(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from opsgate.cli import app

    (tmp_path / "plan.json").write_bytes(b"\xff\xfe")
    monkeypatch.setenv("OPSGATE_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("OPSGATE_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    result = CliRunner().invoke(app, ["rollout", "start", "email-compose", "--plan", str(tmp_path / "plan.json")])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "error: invalid_input: plan.json is not UTF-8 text (byte 0 cannot be decoded)"
