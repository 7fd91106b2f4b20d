"""``opsgate toggles`` and ``opsgate rollout`` against a fresh SQLite file (Typer's CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from tests.security.canaries import KEYS
from typer.testing import CliRunner

from opsgate.rollout.bucketing import bucket
from opsgate.rollout.cli import rollout_app, toggles_app, variants_app

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
    code, output = run("toggles", "set", "email-compose", "--percent", "50")
    assert code == 2 and "rollout_conflict" in output and "rollout 1 (running)" in output  # tester A F3
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


def test_rollout_cli_start_refuses_an_empty_variant_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "60")  # one line however narrow the terminal
    code, output = run("rollout", "start", "email-respond", "--variant", "")
    lines = [line for line in output.splitlines() if "invalid_input" in line]  # (log lines aside)
    assert (code, len(lines)) == (2, 1)
    assert "name the variant to roll out" in lines[0]
    code, output = run("rollout", "status")
    assert code == 0 and "rollout 1" not in output


def test_rollout_cli_start_names_an_unknown_operation_and_the_known_ones() -> None:
    code, output = run("rollout", "start", "email-reply")
    assert code == 2 and "unknown operation (known: " in output and "email-reply" not in output
    assert "email-classify" in output and "no feature toggle" not in output


def test_rollout_cli_status_numbers_stages_from_one(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"stages": [{"percentage": p, "hours": 1} for p in (5, 25, 50, 100)],
                                "observation_hours": 2}))
    run("rollout", "start", "email-compose", "--plan", str(plan))
    run("rollout", "advance")
    run("rollout", "advance")
    code, output = run("rollout", "status")
    assert code == 0 and "stage 3/4" in output and "50 %" in output


def test_variants_show_names_an_unknown_operation_and_the_known_ones(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty.toml").write_text("")  # no providers, routes or prices
    monkeypatch.setenv("OPSGATE_CONFIG", str(tmp_path / "empty.toml"))
    shown = runner.invoke(variants_app, ["show", "email-reply"])
    lines = [line for line in shown.output.splitlines() if "unknown operation" in line]  # (log lines aside)
    assert (shown.exit_code, len(lines)) == (2, 1)
    assert "unknown operation 'email-reply' (known: email-compose, email-classify, email-respond," in lines[0]


def test_rollout_cli_rollback_reason_is_stored_redacted_and_a_nul_is_refused() -> None:
    key = KEYS["anthropic_api_key"]
    assert run("rollout", "start", "email-compose")[0] == 0
    code, output = run("rollout", "rollback", "email-compose", "--reason", "bad\x00answers")
    assert code == 2 and "--reason must not contain control characters" in output
    assert "running" in run("rollout", "status")[1]
    code, output = run("rollout", "rollback", "email-compose", "--reason", f"bad key {key}")
    assert code == 0, output
    code, output = run("rollout", "status")
    assert "rolling_back" in output and "bad key [REDACTED" in output and key not in output


@pytest.mark.parametrize("reason", ["", "   ", "\n\t"])
def test_rollout_cli_rollback_refuses_a_blank_reason_as_the_api_does(reason: str) -> None:
    assert run("rollout", "start", "email-compose")[0] == 0
    code, output = run("rollout", "rollback", "email-compose", "--reason", reason)
    assert (code, output.strip()) == (2, "error: invalid_input: --reason must not be blank")
    assert "running" in run("rollout", "status")[1]  # nothing rolled back, nothing ledgered


@pytest.mark.parametrize("command", [
    ("rollout", "rollback", "email-compose", "--reason", "bad answers"),
    ("rollout", "rollback", "--all", "--reason", "bad answers"),
    ("toggles", "set", "email-compose", "--kill", "--reason", "bad answers"),
])
def test_rollout_cli_rollback_alerts_like_the_api(command: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """tester-ops F4: a rollback from the CLI sent no rollout.rolled_back alert and opened no incident."""
    from sqlalchemy import select

    from opsgate.monitoring.models import outbox
    from opsgate.monitoring.worker import Worker
    from opsgate.runtime import cli_services

    monkeypatch.setenv("OPSGATE_DISCORD_WEBHOOK_URL", "http://127.0.0.1:9/api/webhooks/1/t")
    assert run("rollout", "start", "email-compose")[0] == 0
    code, output = run(*command)
    assert code == 0, output
    with cli_services() as services:
        worker = Worker(services.settings, services.engine, services.ledger, services.clock, None,  # type: ignore[arg-type]
                        incidents=services.incidents, rollout=services.rollout)
        assert worker.handle_signals() == 1
        [incident] = services.incidents.list()
        with services.engine.connect() as conn:
            rows = conn.execute(select(outbox.c.channel, outbox.c.incident_id, outbox.c.state)).all()
    assert (incident["title"], incident["severity"], incident["state"]) == (
        "Rollout 1: rollout.rolled_back", "P2", "open")
    assert rows == [("discord", incident["id"], "pending")]


@pytest.mark.parametrize("command", [("rollout", "rollback", "email-compose"), ("toggles", "set", "email-compose")])
def test_rollout_cli_reason_is_capped_at_the_api_limit(command: tuple[str, ...]) -> None:
    assert run("rollout", "start", "email-compose")[0] == 0
    code, output = run(*command, "--reason", "x" * 501)
    assert (code, output.strip()) == (2, "error: invalid_input: --reason must be at most 500 characters (got 501)")
    assert "running" in run("rollout", "status")[1]
    code, output = run(*command, "--reason", "x" * 500, *(["--kill"] if command[0] == "toggles" else []))
    assert code == 0, output
    assert "rolling_back" in run("rollout", "status")[1]
