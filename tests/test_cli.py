"""The command line: users, token, run, ledger verify exit codes, sandbox and serve help."""

from __future__ import annotations

import json
import secrets
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from tests.gateways import stand_in_servers
from tests.security.canaries import KEYS
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.numbers import DECIMAL_RULE

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


def test_users_add_ledgers_each_role_it_grants_as_the_login(env, monkeypatch):
    from opsgate.store.db import make_engine
    from tests.ledgered import entries

    monkeypatch.setattr("getpass.getuser", lambda: "carol")
    for role in ("operator", "admin"):
        assert runner.invoke(app, ["users", "add", "bob", "--role", role]).exit_code == 0
    assert runner.invoke(app, ["users", "add", "eve", "--role", "root"]).exit_code == 2
    engine = make_engine(f"sqlite:///{env}")
    assert entries(engine, "user.role_set") == [
        {"user_id": "bob", "role": "operator", "actor": "cli:carol", "before": None},
        {"user_id": "bob", "role": "admin", "actor": "cli:carol", "before": "operator"},
    ]
    engine.dispose()


def test_users_add_role_change_revokes_logins_like_the_api(env):
    from opsgate.clock import SystemClock
    from opsgate.config import Settings
    from opsgate.security.service import build_security
    from opsgate.store.db import open_database

    assert runner.invoke(app, ["users", "add", "dave", "--role", "operator"]).exit_code == 0
    engine = open_database(Settings())
    refresh = build_security(Settings(), SystemClock(), engine).refresh
    login = refresh.issue("dave")  # a refresh token or dashboard session (a login family)
    assert runner.invoke(app, ["users", "add", "dave", "--role", "user"]).stdout.strip() == "updated dave (user)"
    assert not refresh.family_active(login.family_id)
    engine.dispose()


def test_token_for_unknown_user_fails(env):
    result = runner.invoke(app, ["token", "nobody"])
    assert result.exit_code == 1 and "no such user" in result.output


def test_users_add_rejects_unknown_role(env):
    result = runner.invoke(app, ["users", "add", "bob", "--role", "root"])
    assert result.exit_code == 2 and "unknown role" in result.output


@pytest.mark.parametrize(("user_id", "message"), [
    ("", "user_id is 1 to 128 characters"), ("x" * 129, "user_id is 1 to 128 characters"),
    ("   ", "user_id must not be blank"), ("al\x01ice", "user_id must not contain control characters"),
    ("ghost  ", "user_id must not start or end with whitespace"), (" ghost", "must not start or end with whitespace"),
    ("ghost\u00a0", "user_id must not start or end with whitespace"),
    (KEYS["anthropic_api_key"], "user_id must not look like a secret"),
])
def test_users_add_refuses_an_id_no_budget_could_name_in_one_line(env, user_id, message):
    result = runner.invoke(app, ["users", "add", user_id])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert KEYS["anthropic_api_key"] not in result.output
    count = create_engine(f"sqlite:///{env}").connect().execute(text("SELECT count(*) FROM users")).scalar()
    assert count == 0


def test_user_ids_are_opaque_and_a_budget_for_a_user_not_yet_there_says_so(env):
    for user_id in ("a b", "../../etc", "auth0|5f3c2a"):
        added = runner.invoke(app, ["users", "add", user_id])
        assert added.exit_code == 0 and added.stdout.strip() == f"created {user_id} (user)"
    known = runner.invoke(app, ["budgets", "set", "--user", "a b", "--period", "day", "--limit-usd", "1"])
    assert known.exit_code == 0 and "note:" not in known.output
    typo = runner.invoke(app, ["budgets", "set", "--user", "nosuchuser", "--period", "day", "--limit-usd", "1"])
    assert typo.exit_code == 0 and "user:nosuchuser day budget: $1.000000" in typo.stdout
    assert "note: there is no user 'nosuchuser' yet" in " ".join(typo.stderr.split())


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


def test_run_as_an_unknown_user_is_one_line_and_exit_2(env):
    result = runner.invoke(app, ["run", "email-classify", "--input", str(EXAMPLES / "email-classify.eml"),
                                 "--sandbox", "--user", "nobody-here"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == "error: no such user; create it with `opsgate users add USER_ID`"
    assert "Traceback" not in result.output


def test_run_keeps_its_own_user_as_an_admin_promoted_it(env):
    first = ["run", "email-classify", "--input", str(EXAMPLES / "email-classify.eml"), "--sandbox"]
    assert runner.invoke(app, first).exit_code == 0
    assert runner.invoke(app, ["users", "add", "opsgate-cli", "--role", "operator"]).exit_code == 0
    again = runner.invoke(app, first)
    assert again.exit_code == 0, again.output  # add_user refused to demote it: a traceback before
    role = create_engine(f"sqlite:///{env}").connect().execute(
        text("SELECT role FROM users WHERE user_id = 'opsgate-cli'")).scalar()
    assert role == "operator"


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_run_reads_an_8bit_display_name_in_utf8_or_latin1(env, tmp_path, encoding):
    """Raw 8-bit From display names (RFC 6532 UTF-8, or legacy Latin-1 bytes) ended in
    internal_error: the parser kept them as lone surrogates that a strict encode later refused."""
    eml = tmp_path / "u.eml"
    eml.write_bytes("From: José Müller <jose@example.com>\nTo: bob@example.com\nSubject: hi\n\nHello\n".encode(encoding))
    result = runner.invoke(app, ["run", "email-classify", "--input", str(eml), "--sandbox"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout[result.stdout.index("{"):])["operation"] == "email-classify"


def test_run_refuses_a_json_input_with_a_lone_surrogate_in_one_line(env, tmp_path):
    """A .json input is read like an HTTP body: ``"\\ud800"`` (and NaN) are refused, not a traceback."""
    for content in (b'{"raw": "From: a@example.com\\n\\n\\ud800"}', b'{"tasks": NaN}'):
        body = tmp_path / "in.json"
        body.write_bytes(content)
        result = runner.invoke(app, ["run", "email-classify", "--input", str(body), "--sandbox"])
        assert result.exit_code == 1 and not isinstance(result.exception, UnicodeError), result.output
        assert "invalid_input: the .json input file is not valid JSON" in result.output
        assert "Traceback" not in result.output


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
    started = stand_in_servers(monkeypatch)
    monkeypatch.setenv("OPSGATE_RATE_LIMIT_USER_TPM", "50000")
    result = runner.invoke(app, ["serve", "--workers", "3"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and started == [] and len(lines) == 1
    assert "counted per worker (3x each limit)" in lines[0] and "--per-worker-limits" in lines[0]

    assert runner.invoke(app, ["serve", "--workers", "3", "--per-worker-limits"]).exit_code == 0
    monkeypatch.setenv("OPSGATE_REDIS_URL", "redis://127.0.0.1:6379/0")
    assert runner.invoke(app, ["serve", "--workers", "3"]).exit_code == 0
    assert started == [3, 3]


def _shown_budgets(stdout: str) -> list[dict[str, str]]:
    """The budgets of ``opsgate budgets show``'s table: its cells joined per budget (a folded
    scope rejoined), the stacked amounts by name."""
    budgets: list[dict[str, str]] = []
    lines: list[list[str]] = []
    for line in stdout.splitlines() + ["├"]:
        if line.startswith("│"):
            lines.append([c.strip() for c in line.strip().strip("│").split("│")])
        elif lines:
            scope, period, policy, names, amounts, today = zip(*lines, strict=True)
            budget = {"scope": "".join(scope), "period": period[0], "since": period[1],
                      "on exhausted": policy[0], "today": " ".join(t for t in today if t)}
            budget.update({n: a for n, a in zip(names, amounts, strict=True) if n})
            budgets.append(budget)
            lines = []
    return budgets


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
    [budget] = _shown_budgets(show.stdout)
    spent = Decimal(budget["spent"].lstrip("$"))
    assert (budget["scope"], budget["period"], budget["on exhausted"]) == ("global", "day", "cheaper")
    assert (budget["today"], budget["reserved"]) == ("refused 0 degraded 1", "$0.000000")
    assert spent == Decimal(body["cost_micro_usd"]) / 10**6
    assert Decimal(budget["left"].lstrip("$")) == Decimal("0.002") - spent
    bad = runner.invoke(app, ["budgets", "set", "--global", "--period", "day", "--limit-usd", "1",
                              "--on-exhausted", "cheapest"])
    assert bad.exit_code == 2 and "on_exhausted must be one of refuse, cheaper" in bad.output


@pytest.mark.parametrize("command", [["variants", "list"], ["config", "check"], ["budgets", "show"], ["serve"]])
def test_a_malformed_config_file_is_one_line_naming_file_line_and_column(env, tmp_path, monkeypatch, command):
    config = tmp_path / "opsgate.toml"
    config.write_text('[providers.local]\nbase_url = "http://127.0.0.1:9/v1"\n[variants.email-classify.x\n')
    monkeypatch.setenv("OPSGATE_CONFIG", str(config))
    started = stand_in_servers(monkeypatch)
    result = runner.invoke(app, command)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert (result.exit_code, started, len(lines)) == (2, [], 1), result.output
    assert f"{config} (OPSGATE_CONFIG) is not valid TOML" in lines[0] and "(at line 3, column 27)" in lines[0]
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_budgets_show_at_80_columns_cuts_no_amount_and_no_scope(env, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    for args in (["--global", "--limit-usd", "1000000000"],
                 ["--user", "alice-from-accounting", "--operation", "email-compose",
                  "--limit-usd", "1234.5"]):
        assert runner.invoke(app, ["budgets", "set", *args, "--period", "month"]).exit_code == 0
    show = runner.invoke(app, ["budgets", "show"])
    assert show.exit_code == 0, show.output
    assert max(len(line) for line in show.stdout.splitlines()) <= 80 and "…" not in show.stdout
    first, second = _shown_budgets(show.stdout)
    assert (first["scope"], first["limit"], first["left"]) == (
        "global", "$1,000,000,000.000000", "$1,000,000,000.000000")
    assert (second["scope"], second["limit"], second["spent"]) == (
        "user:alice-from-accounting/operation:email-compose", "$1,234.500000", "$0.000000")
    assert second["period"] == "month" and second["since"].endswith("-01")


@pytest.mark.parametrize(("args", "message"), [
    (["--global", "--limit-usd", "99999999999999"], "limit_usd must be at most 1,000,000,000 USD"),
    (["--global", "--limit-usd", "1e400"], f"limit_usd must be {DECIMAL_RULE}"),
    (["--global", "--limit-usd", "1_000"], f"limit_usd must be {DECIMAL_RULE}"),
    (["--global", "--limit-usd", "\uff11\uff10"], f"limit_usd must be {DECIMAL_RULE}"),
    (["--global", "--limit-usd", "\u0661\u0660"], f"limit_usd must be {DECIMAL_RULE}"),
    (["--operation", "no-such-op", "--limit-usd", "1"], "unknown operation; known: analytics-anomaly"),
    (["--scope", "shadow", "--limit-usd", "1", "--on-exhausted", "cheaper"],
     "a shadow budget cannot be cheaper: shadow calls are never degraded"),
])
def test_budgets_set_refuses_bad_input_in_one_line(env, args, message):
    result = runner.invoke(app, ["budgets", "set", *args, "--period", "day"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert "no budgets configured" in runner.invoke(app, ["budgets", "show"]).stdout


def test_budgets_set_accepts_the_largest_limit_and_a_user_without_calls(env):
    result = runner.invoke(app, ["budgets", "set", "--user", "nobody-yet", "--period", "day",
                                 "--limit-usd", "1000000000"])
    assert result.exit_code == 0 and "user:nobody-yet day budget: $1,000,000,000.000000" in result.stdout


def test_budgets_set_refuses_a_secret_shaped_user_id_like_the_api(env):
    key = KEYS["anthropic_api_key"]
    bad = runner.invoke(app, ["budgets", "set", "--user", key, "--period", "day", "--limit-usd", "1"])
    assert bad.exit_code == 2 and "user_id must not look like a secret" in bad.output and key not in bad.output
    show = runner.invoke(app, ["budgets", "show"])
    assert show.exit_code == 0 and key[:12] not in show.stdout and "user:" not in show.stdout


def test_a_budget_past_its_limit_shows_0_left_and_over_by_in_cli_and_api(env, monkeypatch):
    """Spent past the limit (a limit lowered below the spend): left is $0, never negative, and the
    excess is "over by" in `budgets show` and over_micro_usd in the API/dashboard document."""
    from datetime import UTC, datetime

    from opsgate.metering.budgets import budget_statuses, period_start
    from opsgate.metering.models import budget_counters
    from opsgate.metering.views import status_json

    monkeypatch.setenv("COLUMNS", "120")
    assert runner.invoke(app, ["budgets", "set", "--global", "--period", "day", "--limit-usd", "1"]).exit_code == 0
    engine = create_engine(f"sqlite:///{env}")
    with engine.begin() as conn:
        conn.execute(budget_counters.insert().values(budget_id=1, period_start=period_start("day", datetime.now(UTC)),
                                                     spent_micro_usd=1_500_000, reserved_micro_usd=250_000))
    show = runner.invoke(app, ["budgets", "show"])
    [shown] = _shown_budgets(show.stdout)
    assert (shown["left"], shown["over by"]) == ("$0.000000", "$0.750000")
    [status] = budget_statuses(engine, datetime.now(UTC))
    document = status_json(status)
    assert (document["left_micro_usd"], document["over_micro_usd"]) == (0, 750_000)
    assert runner.invoke(app, ["budgets", "set", "--global", "--period", "day", "--limit-usd", "2"]).exit_code == 0
    [within] = _shown_budgets(runner.invoke(app, ["budgets", "show"]).stdout)
    assert within["left"] == "$0.250000" and "over by" not in within


FAULTS = [("bogus:thing", "unknown fault profile part 'bogus:thing'"),
          ("slow:abc", "bad duration 'abc': use e.g. 50ms or 1.5s"),
          ("outage:nobody", "unknown provider 'nobody': expected one of ('anthropic', 'deepseek', 'gemini')")]


@pytest.mark.parametrize(("profile", "message"), FAULTS)
@pytest.mark.parametrize("command", [["sandbox"], ["serve", "--sandbox"],
                                     ["run", "email-classify", "--input", str(EXAMPLES / "email-classify.eml"), "--sandbox"]])
def test_a_bad_fault_profile_is_one_line_and_exit_2_as_the_option_is_parsed(env, monkeypatch, command, profile, message):
    """Tester B F8: the profile was parsed only while the sandbox app was built, a 49-line
    traceback (exit 1) or uvicorn's "Application startup failed"."""
    started = stand_in_servers(monkeypatch)
    monkeypatch.setattr("opsgate.sandbox.server.run_sandbox_forever", lambda *a: started.append(0))
    result = runner.invoke(app, [*command, "--faults", profile])
    assert (result.exit_code, result.stderr.splitlines(), started) == (2, [f"error: --faults: {message}"], [])
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(("variables", "line"), [
    ({"OPSGATE_SANDBOX": "true", "OPSGATE_SANDBOX_FAULTS": "bogus"},
     "error: OPSGATE_SANDBOX_FAULTS (environment): unknown fault profile part 'bogus'"),
    ({"OPSGATE_SANDBOX_LATENCY_SEED": "3"},
     "error: OPSGATE_SANDBOX_LATENCY_SEED (environment): is for rehearsals only (`opsgate rehearse`, on its "
     "simulated clock)"),
    ({"OPSGATE_IDP_ISSUER": "https://idp.example", "OPSGATE_IDP_JWKS_URL": "https://idp.example/jwks"},
     "error: an identity provider needs OPSGATE_IDP_ISSUER and OPSGATE_IDP_AUDIENCE"),
    ({"OPSGATE_IDP_ISSUER": "https://idp.example", "OPSGATE_IDP_AUDIENCE": "opsgate"},
     "error: set exactly one of OPSGATE_IDP_HS256_SECRET and OPSGATE_IDP_JWKS_URL"),
    ({"OPSGATE_IDP_ISSUER": "https://idp.example", "OPSGATE_IDP_AUDIENCE": "opsgate",
      "OPSGATE_IDP_JWKS_URL": "https://idp.example/jwks", "OPSGATE_IDP_ALGORITHM": "HS999"},
     "error: OPSGATE_IDP_ALGORITHM must be one of RS256, ES256"),
])
@pytest.mark.parametrize("command", [["serve"], ["run", "email-classify", "--input", str(EXAMPLES / "email-classify.eml")]])
def test_settings_only_start_up_read_are_checked_before_it(env, monkeypatch, variables, line, command):
    """Each of these raised deep inside the runtime's construction: a traceback, exit 1."""
    started = stand_in_servers(monkeypatch)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    result = runner.invoke(app, command)
    assert (result.exit_code, result.stderr.splitlines(), started) == (2, [line], [])


@pytest.mark.parametrize("command", [["serve"], ["serve", "--workers", "2"],
                                     ["run", "email-classify", "--input", str(EXAMPLES / "email-classify.eml")]])
def test_faults_without_the_sandboxes_is_refused(env, monkeypatch, command):
    """Tester B F9: `serve --faults outage:anthropic` without --sandbox served the real providers,
    silently. With OPSGATE_SANDBOX=true the profile applies (one process only)."""
    started = stand_in_servers(monkeypatch)
    result = runner.invoke(app, [*command, "--faults", "outage:anthropic"])
    [line] = result.stderr.splitlines()
    assert (result.exit_code, started) == (2, []) and "--faults" in line and "sandbox" in line
    if command == ["serve"]:
        assert line == "error: --faults needs --sandbox: without it the providers are the real ones"
        monkeypatch.setenv("OPSGATE_SANDBOX", "true")
        assert runner.invoke(app, [*command, "--faults", "outage:anthropic"]).exit_code == 0
        assert len(started) == 1


def test_sandbox_on_a_port_in_use_is_one_line_and_exit_2(env):
    """Was a 44-line OSError traceback, exit 1 (found beside tester B F8)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["sandbox", "--port", str(port)])
    assert (result.exit_code, result.stderr.splitlines()) == (
        2, [f"error: cannot listen on 127.0.0.1:{port}: error while attempting to bind on address "
            f"('127.0.0.1', {port}): address already in use"])
