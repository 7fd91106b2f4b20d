"""``opsgate toggles`` and ``opsgate rollout`` against a fresh SQLite file (Typer's CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from opsgate.rollout.bucketing import bucket
from opsgate.rollout.cli import rollout_app, toggles_app

cli = typer.Typer()
cli.add_typer(toggles_app, name="toggles")
cli.add_typer(rollout_app, name="rollout")
runner = CliRunner()


@pytest.fixture(autouse=True)
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSGATE_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("COLUMNS", "200")


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(cli, list(args))
    return result.exit_code, result.output


def test_rollout_cli_toggles_list_starts_with_nine_disabled_operations() -> None:
    code, output = run("toggles", "list")
    assert code == 0
    for op in ("email-compose", "calendar-time", "analytics-anomaly"):
        assert op in output
    assert output.count("opsgate-seed") == 9


def test_rollout_cli_set_and_check_exit_codes() -> None:
    user = next(f"user-{i}" for i in range(1000) if bucket("email-classify", f"user-{i}") > 30)
    code, _ = run("toggles", "check", "email-classify", user)
    assert code == 1
    code, output = run("toggles", "set", "email-classify", "--enable", "--percent", "30", "--no-opt-in")
    assert code == 0 and "rollout=30 %" in output
    code, output = run("toggles", "check", "email-classify", user)
    assert code == 1
    assert f"bucket {bucket('email-classify', user)}" in output and "not_in_rollout" in output
    run("toggles", "set", "email-classify", "--percent", "100")
    code, output = run("toggles", "check", "email-classify", user)
    assert (code, "yes" in output) == (0, True)


def test_rollout_cli_rejects_out_of_range_percent() -> None:
    code, _ = run("toggles", "set", "email-classify", "--percent", "101")
    assert code == 2


def test_rollout_cli_start_status_advance_rollback(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"stages": [{"percentage": 10, "hours": 1}, {"percentage": 100, "hours": 1}],
                                "observation_hours": 2}))
    code, output = run("rollout", "start", "email-compose", "task-breakdown", "--plan", str(plan))
    assert (code, "rollout 1 started: email-compose, task-breakdown at 10 %" in output) == (0, True)
    code, output = run("rollout", "start", "email-compose")
    assert code == 2 and "rollout_conflict" in output
    code, output = run("rollout", "advance")
    assert code == 0 and "promote -> running at 100 %" in output
    code, output = run("rollout", "status")
    assert code == 0 and "stage 2/2" in output and "advanced by an operator" in output
    code, output = run("rollout", "rollback", "--reason", "bad answers")
    assert code == 2
    code, output = run("rollout", "rollback", "task-breakdown", "--reason", "bad answers")
    assert code == 0 and "disabled: email-compose, task-breakdown" in output
    code, output = run("rollout", "status")
    assert "rolling_back" in output and "bad answers" in output
    code, output = run("rollout", "advance", "--id", "1")
    assert code == 2 and "cannot advance" in output
