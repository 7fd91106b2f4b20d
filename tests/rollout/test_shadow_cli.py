"""``opsgate budgets set --scope shadow`` and ``opsgate rollout start --variant V --shadow PERCENT``
then ``rollout status`` against a fresh SQLite file (the real CLI app, Typer's CliRunner)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from opsgate.cli import app as cli_app

runner = CliRunner()


@pytest.fixture(autouse=True)
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "opsgate.toml"
    config.write_text('[variants.email-classify.flash]\nchain = ["deepseek/deepseek-chat"]\n')
    monkeypatch.setenv("OPSGATE_CONFIG", str(config))
    monkeypatch.setenv("OPSGATE_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("COLUMNS", "200")


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(cli_app, list(args))
    return result.exit_code, result.output


def test_a_shadow_budget_is_set_and_shown_as_the_shadow_scope() -> None:
    assert run("budgets", "set", "--scope", "shadow", "--period", "day", "--limit-usd", "2.50") == (
        0, "shadow day budget: $2.500000, on exhausted: refuse\n")
    code, output = run("budgets", "show")
    assert code == 0
    [row] = [line for line in output.splitlines() if "shadow" in line]
    assert "day" in row and "$2.500000" in row


@pytest.mark.parametrize("args", [
    ("--scope", "shadow", "--global"),
    ("--scope", "shadow", "--operation", "email-classify"),
    ("--scope", "everything"),
])
def test_a_shadow_scope_mixed_with_another_scope_or_an_unknown_scope_is_refused(args: tuple[str, ...]) -> None:
    code, output = run("budgets", "set", *args, "--period", "day", "--limit-usd", "1")
    assert code == 2 and "error" in output
    assert "shadow" not in run("budgets", "show")[1]


def test_rollout_start_with_shadow_reports_the_shadow_stage_in_status() -> None:
    code, output = run("rollout", "start", "email-classify", "--variant", "flash", "--shadow", "20")
    assert code == 0, output
    assert "variant flash of email-classify shadowing 20 % of live calls" in output
    code, output = run("rollout", "status")
    assert code == 0
    assert "email-classify: running, stage 1/4, 0 %" in output
    assert ("shadowing 20 % of live calls: 0 shadow calls, agreement - (0 agreed, 0 failed), 0 refused "
            "by the shadow budget, cost shadow/live -") in output


def test_rollout_start_with_shadow_needs_a_variant() -> None:
    code, output = run("rollout", "start", "email-classify", "--shadow", "20")
    assert code == 2 and "needs a variant rollout" in output
    assert run("rollout", "status")[1].startswith("no rollouts")
