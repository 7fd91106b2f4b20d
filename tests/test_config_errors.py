"""A configuration the gateway cannot use (a bad environment variable, an unreadable or missing
configuration file, an unsupported or unreachable database) ends every command with one line
``error: <variable or file>: <what is wrong>`` and exit 2: no traceback, no secret. Found by an
outside tester (F4): each of these crashed with a 50-500 line Rich traceback and exit 1.

Most cases run in-process (``CliRunner``, the same root command and boundary); the unreachable
PostgreSQL runs as the operator runs it, ``python -m opsgate.cli`` in a fresh process, where
Typer would print its Rich traceback."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import opsgate
from opsgate.cli import app
from opsgate.config import Settings

PASSWORD = "pw-" + secrets.token_hex(8)  # pragma: allowlist secret (generated at test time)
SHORT_SECRET = "short-" + secrets.token_hex(2)  # pragma: allowlist secret (generated at test time)


def _opsgate(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")}
    base.update({"PYTHONPATH": str(Path(opsgate.__file__).parents[1]),  # this checkout's, from any cwd
                 "OPSGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'ok.db'}",
                 "OPSGATE_CONFIG": str(_empty(tmp_path)), **env})
    return subprocess.run([sys.executable, "-m", "opsgate.cli", *args], env=base, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.toml"
    path.write_text("")
    return path


def _not_utf8(tmp_path: Path) -> str:
    path = tmp_path / "bad.toml"
    path.write_bytes(b"\xff\xfe[providers")
    return str(path)


def _too_deep(tmp_path: Path) -> str:
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 100_000)  # tomllib recurses per level: RecursionError (tester-ops F8's kind)
    return str(path)


CASES = [
    # (environment, command, the one line expected on stderr)
    (lambda t: {"OPSGATE_CONFIG": _too_deep(t)}, ["config", "check"],
     lambda t: f"error: {t / 'deep.toml'} (OPSGATE_CONFIG) nests arrays and tables too deep to read"),
    (lambda t: {"OPSGATE_CONFIG": _not_utf8(t)}, ["toggles", "list"],
     lambda t: f"error: {t / 'bad.toml'} (OPSGATE_CONFIG) is not UTF-8 text: byte 0xff at offset 0"),
    (lambda t: {"OPSGATE_CONFIG": str(t / "nonexistent.toml")}, ["toggles", "list"],
     lambda t: f"error: configuration file {t / 'nonexistent.toml'} (OPSGATE_CONFIG) does not exist"),
    (lambda t: {"OPSGATE_PRIVACY_PSEUDONYMISE": "notjson"}, ["toggles", "list"],
     lambda t: 'error: OPSGATE_PRIVACY_PSEUDONYMISE (environment): must be JSON, e.g. ["a", "b"] '
               'or {"k": 1} (Expecting value)'),
    (lambda t: {"OPSGATE_LOG_LEVEL": "LOUD"}, ["toggles", "list"],
     lambda t: "error: OPSGATE_LOG_LEVEL (environment): must be one of CRITICAL, ERROR, WARNING, INFO, DEBUG"),
    (lambda t: {"OPSGATE_LEDGER_SYNCHRONOUS": "OFF"}, ["toggles", "list"],  # it was taken as FULL
     lambda t: "error: OPSGATE_LEDGER_SYNCHRONOUS (environment): Input should be 'FULL' or 'NORMAL'"),
    (lambda t: {"OPSGATE_REDACTION_PHONE_REGIONS": '["XX"]'}, ["toggles", "list"],
     lambda t: "error: OPSGATE_REDACTION_PHONE_REGIONS (environment): unknown ISO 3166-1 alpha-2 "
               "region code(s) ['XX'] (e.g. US, GB, DE)"),
    (lambda t: {"OPSGATE_JWT_SECRET": SHORT_SECRET}, ["token", "alice"],
     lambda t: "error: OPSGATE_JWT_SECRET (environment): must be at least 32 bytes long (it is 10)"),
    (lambda t: {"OPSGATE_JWT_SECRET": SHORT_SECRET}, ["toggles", "list"],  # not only where tokens are made
     lambda t: "error: OPSGATE_JWT_SECRET (environment): must be at least 32 bytes long (it is 10)"),
    (lambda t: {"OPSGATE_DATABASE_URL": f"mysql://u:{PASSWORD}@h/db"}, ["toggles", "list"],
     lambda t: "error: OPSGATE_DATABASE_URL (environment): 'mysql' is not supported: use "
               "sqlite:///PATH or postgresql://USER@HOST/DB (psycopg 3)"),
    (lambda t: {"OPSGATE_DATABASE_URL": "sqlite:////nonexistent-opsgate/dir/x.db"}, ["toggles", "list"],
     lambda t: "error: OPSGATE_DATABASE_URL (sqlite:////nonexistent-opsgate/dir/x.db): cannot connect: "
               "unable to open database file"),
    (lambda t: {"OPSGATE_RATE_LIMIT_USER_RPM": "abc"}, ["toggles", "list"],
     lambda t: "error: OPSGATE_RATE_LIMIT_USER_RPM (environment): Input should be a valid integer, "
               "unable to parse string as an integer"),
    # the router's and the token service's own checks refused these only deep in start-up (tester B F8)
    (lambda t: {"OPSGATE_BREAKER_FAILURE_THRESHOLD": "0"}, ["serve"],
     lambda t: "error: OPSGATE_BREAKER_FAILURE_THRESHOLD (environment): Input should be greater than or equal to 1"),
    (lambda t: {"OPSGATE_BREAKER_COOLDOWN_S": "-1"}, ["serve"],
     lambda t: "error: OPSGATE_BREAKER_COOLDOWN_S (environment): Input should be greater than or equal to 0"),
    (lambda t: {"OPSGATE_PROVIDER_TIMEOUT_S": "0"}, ["serve"],
     lambda t: "error: OPSGATE_PROVIDER_TIMEOUT_S (environment): Input should be greater than 0"),
    (lambda t: {"OPSGATE_MAX_RETRY_WAIT_S": "-5"}, ["serve"],
     lambda t: "error: OPSGATE_MAX_RETRY_WAIT_S (environment): Input should be greater than or equal to 0"),
    (lambda t: {"OPSGATE_ACCESS_TOKEN_TTL_S": "-5"}, ["token", "alice"],  # issued tokens already expired
     lambda t: "error: OPSGATE_ACCESS_TOKEN_TTL_S (environment): Input should be greater than 0"),
    (lambda t: {"OPSGATE_REDIS_URL": f"http://u:{PASSWORD}@127.0.0.1:6379/0"}, ["serve"],
     lambda t: "error: OPSGATE_REDIS_URL (environment): must start with redis://, rediss://, unix://"),
    (lambda t: {"OPSGATE_MASTER_KEY": "not base64!"}, ["keys", "status"],  # the key ring's own check
     lambda t: "error: OPSGATE_MASTER_KEY (environment): is not base64"),
    (lambda t: {"OPSGATE_MASTER_KEY": "c2hvcnQ="}, ["serve"],
     lambda t: "error: OPSGATE_MASTER_KEY (environment): must decode to exactly 32 bytes"),
]


@pytest.mark.parametrize(("env", "command", "line"), CASES)
def test_a_bad_configuration_is_one_line_naming_it_and_exit_2(tmp_path, monkeypatch, env, command, line):
    for name in [n for n in os.environ if n.startswith("OPSGATE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    given = {"OPSGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'ok.db'}",
             "OPSGATE_CONFIG": str(_empty(tmp_path)), **env(tmp_path)}
    result = CliRunner().invoke(app, command, env=given)
    assert (result.exit_code, result.stderr.splitlines(), result.stdout) == (2, [line(tmp_path)], "")
    assert isinstance(result.exception, SystemExit)  # no traceback: an exit, not an exception
    assert not list(tmp_path.glob("*.db"))  # refused before any database was opened or created


def test_an_unreachable_postgresql_is_one_line_without_its_password(tmp_path):
    url = f"postgresql://opsgate:{PASSWORD}@127.0.0.1:1/db"  # port 1: nothing listens
    for command in (["toggles", "list"], ["serve", "--port", "0"]):  # a command that opens it, and start-up
        done = _opsgate(tmp_path, {"OPSGATE_DATABASE_URL": url}, *command)
        [line] = done.stderr.splitlines()
        assert done.returncode == 2, (command, done.stderr)
        assert line.startswith("error: OPSGATE_DATABASE_URL (postgresql+psycopg://"), line
        assert line.endswith('@127.0.0.1:1/db): cannot connect: connection failed: connection to server '
                             'at "127.0.0.1", port 1 failed: Connection refused'), line
        assert PASSWORD not in done.stderr + done.stdout


def test_a_missing_postgresql_database_names_it_without_the_password(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSGATE_CONFIG", str(_empty(tmp_path)))
    monkeypatch.setenv("OPSGATE_DATABASE_URL", f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/opsgate_no_such_db")
    result = CliRunner().invoke(app, ["toggles", "list"])
    [line] = result.stderr.splitlines()
    assert result.exit_code == 2 and line.endswith('FATAL:  database "opsgate_no_such_db" does not exist'), line
    assert PASSWORD not in result.output


def test_a_value_from_the_config_file_is_attributed_to_the_file(tmp_path, monkeypatch):
    config = tmp_path / "opsgate.toml"
    config.write_text("[routes.default]\ntimeout_s = -1\n")
    monkeypatch.setenv("OPSGATE_CONFIG", str(config))
    monkeypatch.setenv("OPSGATE_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    result = CliRunner().invoke(app, ["toggles", "list"])
    assert (result.exit_code, result.output.strip()) == (
        2, f"error: routes.default.timeout_s ({config}): Input should be greater than 0")
    assert isinstance(result.exception, SystemExit)


def test_an_unexpected_error_prints_a_sanitized_traceback_and_exit_1(tmp_path, monkeypatch):
    secret = "sk-ant-api03-" + secrets.token_urlsafe(40)  # pragma: allowlist secret (generated at test time)
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    monkeypatch.setenv("OPSGATE_CONFIG", str(_empty(tmp_path)))
    monkeypatch.setenv("OPSGATE_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")

    def broken(*_args: object) -> None:
        raise RuntimeError(f"a bug that repeats the key {secret}")

    monkeypatch.setattr("opsgate.runtime.open_database", broken)  # opsgate token opens it through cli_services
    result = CliRunner().invoke(app, ["token", "alice"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "Traceback (most recent call last)" in result.output
    assert "RuntimeError: a bug that repeats the key [REDACTED:" in result.output
    assert secret not in result.output


@pytest.mark.parametrize("variable", ["ANTHROPIC_API_KEY", "LOCAL_KEY"])
def test_a_provider_key_reference_that_cannot_be_resolved_is_one_line_naming_its_variable(
        tmp_path, monkeypatch, variable):
    """A built-in provider's key or a named endpoint's (``api_key_env``) given as an ``op://``
    reference without 1Password Connect: start-up stops with one line, exit 2 (it was a traceback
    and exit 1)."""
    for name in [n for n in os.environ if n.startswith(("OPSGATE_", "OP_CONNECT_"))]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "opsgate.toml"
    config.write_text('[providers.local]\nkind = "openai-compatible"\nbase_url = "http://127.0.0.1:9/v1"\n'
                      'api_key_env = "LOCAL_KEY"\n')  # pragma: allowlist secret
    given = {"OPSGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'ok.db'}", "OPSGATE_CONFIG": str(config),
             variable: "op://Prod/Anthropic/keys/credential"}
    example = Path(__file__).parents[1] / "examples" / "task-prioritize.json"
    result = CliRunner().invoke(app, ["run", "task-prioritize", "--input", str(example)], env=given)
    assert (result.exit_code, result.stderr.splitlines(), result.stdout) == (2, [
        f"error: {variable} (environment): {variable} is a 1Password reference but OP_CONNECT_HOST is not set"], "")


EXAMPLES = Path(__file__).parents[1] / "examples"
START_UPS = [  # every command that starts the gateway (opsgate.app.open_app)
    pytest.param(["run", "task-prioritize", "--input", str(EXAMPLES / "task-prioritize.json")], id="run"),
    pytest.param(["serve", "--port", "0"], id="serve"),
    pytest.param(["serve", "--port", "0", "--workers", "2"], id="serve-workers-2"),  # start-up runs in the parent first
    pytest.param(["demo", "--examples", str(EXAMPLES)], id="demo"),
    pytest.param(["rehearse", "--hours", "1", "--users", "10", "--examples", str(EXAMPLES)], id="rehearse"),
]


def _clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith(("OPSGATE_", "OP_CONNECT_"))]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _one_error_line(result) -> str:  # type: ignore[no-untyped-def]
    """The command's error line: the last line on stderr (a sandbox command announces sandbox
    mode on the line before), with no traceback anywhere."""
    assert "Traceback" not in result.output and "Traceback" not in result.stderr, result.stderr
    assert isinstance(result.exception, SystemExit)  # an exit, not an exception
    lines = [line for line in result.stderr.splitlines() if "SANDBOX MODE" not in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("command", START_UPS)
def test_an_unresolvable_key_reference_stops_every_start_up_with_one_line(tmp_path, monkeypatch, command):
    """Start-up ran inside uvicorn's lifespan for serve, demo and rehearse: uvicorn logged the
    ConfigError's traceback and exited 3 (serve), or the commands died with "the local server
    did not start" and exit 1 (demo, rehearse); serve --workers 2 logged a traceback per worker
    and exited 0. Now each is the one line `opsgate run` prints, exit 2."""
    assert _start_with_reference(tmp_path, monkeypatch, command, "ANTHROPIC_API_KEY",
                                 "op://Prod/Anthropic/keys/credential") == (2, _unresolvable("ANTHROPIC_API_KEY"))


@pytest.mark.parametrize("command", [*START_UPS[:4], pytest.param(["token", "alice"], id="token")])
def test_an_unresolvable_jwt_secret_reference_stops_every_start_up_with_one_line(tmp_path, monkeypatch, command):
    """Tester-ops F1: OPSGATE_JWT_SECRET=op://... was never resolved; serve, run and demo started and
    signed tokens with the reference's text (the rehearsal makes its own key)."""
    assert _start_with_reference(tmp_path, monkeypatch, command, "OPSGATE_JWT_SECRET",
                                 "op://Prod/opsgate/jwt-signing-secret") == (2, _unresolvable("OPSGATE_JWT_SECRET"))


def _start_with_reference(tmp_path, monkeypatch, command, name, reference):  # type: ignore[no-untyped-def]
    """``command``'s exit code and one error line with setting ``name`` given a 1Password
    ``reference`` and no OP_CONNECT_HOST."""
    _clean_env(tmp_path, monkeypatch)
    given = {"OPSGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'ok.db'}", "OPSGATE_CONFIG": str(_empty(tmp_path)),
             name: reference}
    result = CliRunner().invoke(app, command, env=given)
    return result.exit_code, _one_error_line(result)


def _unresolvable(name: str) -> str:
    return f"error: {name} (environment): {name} is a 1Password reference but OP_CONNECT_HOST is not set"


@pytest.mark.parametrize("command", START_UPS[1:])
def test_an_unreachable_database_stops_every_start_up_with_one_line_without_its_password(
        tmp_path, monkeypatch, command):
    """The rehearsal's own --database-url is the URL named (the boundary named
    OPSGATE_DATABASE_URL's value, a SQLite file, when the rehearsal's PostgreSQL refused)."""
    _clean_env(tmp_path, monkeypatch)
    url = f"postgresql://opsgate:{PASSWORD}@127.0.0.1:1/db"  # port 1: nothing listens
    given = {"OPSGATE_CONFIG": str(_empty(tmp_path)),
             "OPSGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'ok.db'}" if command[0] == "rehearse" else url}
    extra = ["--database-url", url] if command[0] == "rehearse" else []
    result = CliRunner().invoke(app, [*command, *extra], env=given)
    line = _one_error_line(result)
    assert result.exit_code == 2 and line.startswith("error: OPSGATE_DATABASE_URL (postgresql+psycopg://"), line
    assert line.endswith('@127.0.0.1:1/db): cannot connect: connection failed: connection to server at '
                         '"127.0.0.1", port 1 failed: Connection refused'), line
    assert PASSWORD not in result.output + result.stderr


def test_serve_on_a_port_in_use_is_one_line_and_exit_2(tmp_path, monkeypatch):
    """uvicorn logged "[Errno 98] error while attempting to bind ..." and exited 3, after the
    gateway had started; now the port is bound first."""
    _clean_env(tmp_path, monkeypatch)
    given = {"OPSGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'ok.db'}", "OPSGATE_CONFIG": str(_empty(tmp_path))}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in ("1", "2"):
            result = CliRunner().invoke(app, ["serve", "--port", str(port), "--workers", workers], env=given)
            assert (result.exit_code, result.stderr.splitlines()) == (
                2, [f"error: cannot listen on 127.0.0.1:{port}: Address already in use"]), workers
    assert not list(tmp_path.glob("*.db"))  # refused before the gateway started


def test_the_ledger_synchronous_pragma_ignores_case() -> None:
    assert Settings(ledger_synchronous="normal").ledger_synchronous == "NORMAL"
