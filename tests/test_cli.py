"""The command line: users, token, run, ledger verify exit codes, sandbox and serve help."""

from __future__ import annotations

import json
import secrets
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from opsgate.cli import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()


@pytest.fixture
def env(tmp_path, monkeypatch):
    db = tmp_path / "cli.db"
    monkeypatch.setenv("OPSGATE_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("OPSGATE_JWT_SECRET", secrets.token_urlsafe(48))
    return db


def test_users_add_then_token_verifies(env):
    from opsgate.clock import SystemClock
    from opsgate.config import Settings
    from opsgate.security.auth import TokenService

    assert runner.invoke(app, ["users", "add", "bob", "--role", "operator"]).stdout.strip() == "created bob (operator)"
    result = runner.invoke(app, ["token", "bob"])
    assert result.exit_code == 0
    principal = TokenService(Settings(), SystemClock()).verify(result.stdout.strip())
    assert principal.user_id == "bob" and principal.roles == ("operator",)


def test_token_for_unknown_user_fails(env):
    result = runner.invoke(app, ["token", "nobody"])
    assert result.exit_code == 1 and "no such user" in result.output


def test_users_add_rejects_unknown_role(env):
    result = runner.invoke(app, ["users", "add", "bob", "--role", "root"])
    assert result.exit_code == 2 and "unknown role" in result.output


def test_run_prints_the_result_and_verify_passes(env):
    result = runner.invoke(app, ["run", "email-classify", "--input", str(EXAMPLES / "email-classify.eml"), "--sandbox"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout[result.stdout.index("{"):])
    assert body["operation"] == "email-classify" and body["cost_micro_usd"] > 0
    verify = runner.invoke(app, ["ledger", "verify"])
    assert verify.exit_code == 0 and verify.stdout.startswith("OK entries=")


def test_run_failure_exits_nonzero_with_the_problem_code(env):
    result = runner.invoke(app, ["run", "email-classify", "--input", str(EXAMPLES / "email-classify.eml"),
                                 "--sandbox", "--faults", "safety-blocked"])
    assert result.exit_code == 1 and "content_filtered" in result.output


def test_verify_exit_1_names_the_bad_entry(env):
    assert runner.invoke(app, ["run", "task-breakdown", "--input", str(EXAMPLES / "task-breakdown.ics"), "--sandbox"]).exit_code == 0
    engine = create_engine(f"sqlite:///{env}")
    with engine.begin() as conn:
        seq = conn.execute(text("SELECT max(seq) FROM ledger_entries")).scalar()  # the result entry
        conn.execute(text("DROP TRIGGER ledger_entries_no_update"))  # a tamperer with write access
        conn.execute(text("UPDATE ledger_entries SET body = CAST(REPLACE(CAST(body AS TEXT), '\"ok\"', '\"no\"') AS BLOB) WHERE seq = :s"), {"s": seq})
    result = runner.invoke(app, ["ledger", "verify"])
    assert result.exit_code == 1 and result.stdout.startswith(f"FAIL seq={seq} reason=hash_mismatch")


def test_verify_exit_2_on_an_unreadable_database(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSGATE_DATABASE_URL", f"sqlite:///{tmp_path}/missing-dir/x/../../nope/db.sqlite")
    monkeypatch.setenv("OPSGATE_AUTO_MIGRATE", "false")
    result = runner.invoke(app, ["ledger", "verify"])
    assert result.exit_code == 2 and "error" in result.output


@pytest.mark.parametrize("path", [["serve"], ["sandbox"], ["run"], ["demo"], ["ledger", "verify"], ["db", "upgrade"]])
def test_every_command_has_help(path):
    assert runner.invoke(app, [*path, "--help"]).exit_code == 0


def test_serve_refuses_sandbox_with_several_workers(env):
    result = runner.invoke(app, ["serve", "--sandbox", "--workers", "2"])
    assert result.exit_code == 2 and "one process" in result.output


def test_serve_refuses_several_workers_with_rate_limits_but_no_redis(env, monkeypatch):
    started: list[dict] = []
    monkeypatch.setattr("uvicorn.run", lambda *a, **kw: started.append(kw))
    monkeypatch.setenv("OPSGATE_RATE_LIMIT_USER_TPM", "50000")
    result = runner.invoke(app, ["serve", "--workers", "3"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and started == [] and len(lines) == 1
    assert "counted per worker (3x each limit)" in lines[0] and "--per-worker-limits" in lines[0]

    assert runner.invoke(app, ["serve", "--workers", "3", "--per-worker-limits"]).exit_code == 0
    monkeypatch.setenv("OPSGATE_REDIS_URL", "redis://127.0.0.1:6379/0")
    assert runner.invoke(app, ["serve", "--workers", "3"]).exit_code == 0
    assert [kw["workers"] for kw in started] == [3, 3]


def test_budgets_set_cheaper_serves_a_run_degraded_and_show_counts_it(env, monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")
    set_ = runner.invoke(app, ["budgets", "set", "--global", "--period", "day", "--limit-usd", "0.002",
                               "--on-exhausted", "cheaper"])
    assert set_.exit_code == 0 and "global day budget: $0.002000, on exhausted: cheaper" in set_.stdout
    result = runner.invoke(app, ["run", "email-classify", "--input", str(EXAMPLES / "email-classify.eml"), "--sandbox"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout[result.stdout.index("{"):])
    assert (body["degraded"], body["provider"]) == (True, "deepseek")  # Claude's worst case does not fit
    show = runner.invoke(app, ["budgets", "show"])
    assert show.exit_code == 0, show.output
    assert "refused today" in show.stdout and "degraded today" in show.stdout
    [row] = [line for line in show.stdout.splitlines() if "global" in line]
    cells = [c.strip() for c in row.split("│") if c.strip()]
    spent, reserved, left = (Decimal(c.lstrip("$")) for c in cells[5:8])
    assert cells[3] == "cheaper" and cells[8:] == ["0", "1"]
    assert reserved == 0 and spent == Decimal(body["cost_micro_usd"]) / 10**6 and left == Decimal("0.002") - spent
    bad = runner.invoke(app, ["budgets", "set", "--global", "--period", "day", "--limit-usd", "1",
                              "--on-exhausted", "cheapest"])
    assert bad.exit_code == 2 and "on_exhausted must be one of refuse, cheaper" in bad.output


@pytest.mark.parametrize("command", [["variants", "list"], ["config", "check"], ["budgets", "show"], ["serve"]])
def test_a_malformed_config_file_is_one_line_naming_file_line_and_column(env, tmp_path, monkeypatch, command):
    config = tmp_path / "opsgate.toml"
    config.write_text('[providers.local]\nbase_url = "http://127.0.0.1:9/v1"\n[variants.email-classify.x\n')
    monkeypatch.setenv("OPSGATE_CONFIG", str(config))
    started: list[dict] = []
    monkeypatch.setattr("uvicorn.run", lambda *a, **kw: started.append(kw))
    result = runner.invoke(app, command)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert (result.exit_code, started, len(lines)) == (2, [], 1), result.output
    assert f"{config} is not valid TOML" in lines[0] and "(at line 3, column 27)" in lines[0]
    assert result.exception is None or isinstance(result.exception, SystemExit)
