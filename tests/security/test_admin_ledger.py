"""The permission matrix of docs/security.md, walked: every change it lists, over the API and the
CLI, writes exactly one ledger entry of its kind naming the actor ("Every admin change is
written to the ledger before it takes effect"), and the ledger still verifies afterwards."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from tests.gateways import Gateway, gateway_settings, running_gateway
from tests.ledgered import entries
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.clock import SystemClock
from opsgate.errors import NotFound
from opsgate.ledger.verify import verify
from opsgate.monitoring.rules import Finding, Severity
from opsgate.security.users import add_user, get_role
from opsgate.store.db import make_engine

OP = "email-classify"


@dataclass(frozen=True)
class Change:
    """One row of the matrix: ``action`` as the matrix names it, the ledger ``kind`` it writes,
    and the request that makes it (``method``, ``path``, ``body``; ``{id}`` is the rollout or
    incident the walk made last, ``{budget}`` the budget)."""

    action: str
    kind: str
    method: str
    path: str
    body: dict[str, Any] | None = None


API = [
    Change("Change feature toggles", "toggle.set", "PUT", f"/v1/admin/toggles/{OP}",
           {"enabled": True, "rollout_percentage": 10, "reason": "matrix walk"}),
    Change("Kill switches", "toggle.set", "PUT", f"/v1/admin/toggles/{OP}",
           {"kill_switch": True, "reason": "matrix walk"}),
    Change("Start rollouts", "rollout.decision", "POST", "/v1/admin/rollouts", {"operations": [OP]}),
    Change("Advance rollouts", "rollout.decision", "POST", "/v1/admin/rollouts/{id}/advance"),
    Change("Roll back rollouts", "rollout.decision", "POST", "/v1/admin/rollouts/{id}/rollback",
           {"reason": "matrix walk"}),
    Change("Set budgets", "budget.set", "PUT", "/v1/admin/budgets",
           {"user_id": "ada", "period": "day", "limit_usd": "1.5"}),
    Change("Delete budgets", "budget.delete", "DELETE", "/v1/admin/budgets/{budget}"),
    Change("Change roles", "user.role_set", "PUT", "/v1/admin/users/ada", {"role": "operator"}),
    Change("Acknowledge incidents", "incident.acknowledged", "POST", "/v1/incidents/{id}/ack"),
    Change("Resolve incidents", "incident.resolved", "POST", "/v1/incidents/{id}/resolve",
           {"note": "matrix walk"}),
]

CLI = [
    Change("Change feature toggles", "toggle.set", "cli", "toggles set", {"args": [OP, "--percent", "20"]}),
    Change("Start rollouts", "rollout.decision", "cli", "rollout start", {"args": [OP]}),
    Change("Advance rollouts", "rollout.decision", "cli", "rollout advance", {"args": ["--id", "{id}"]}),
    Change("Roll back rollouts", "rollout.decision", "cli", "rollout rollback",
           {"args": [OP, "--reason", "matrix walk"]}),
    Change("Set budgets", "budget.set", "cli", "budgets set",
           {"args": ["--global", "--period", "month", "--limit-usd", "100"]}),
    Change("Delete budgets", "budget.delete", "cli", "budgets delete", {"args": ["--global", "--period", "month"]}),
    Change("Change roles", "user.role_set", "cli", "users add", {"args": ["bea", "--role", "admin"]}),
    Change("Rotate keys", "key.rotate", "cli", "keys rotate"),
]


def _by(engine: Engine, kind: str, actor: str) -> list[dict[str, Any]]:
    return [e for e in entries(engine, kind) if e.get("actor") == actor]


def _walk(engine: Engine, changes: list[Change], actor: str, make: Callable[[Change], Any]) -> None:
    for change in changes:
        before = len(_by(engine, change.kind, actor))
        make(change)
        assert len(_by(engine, change.kind, actor)) == before + 1, change.action
    report = verify(engine)
    assert report.ok, report.failure


def test_every_admin_change_over_the_api_is_one_ledger_entry_by_the_admin(tmp_path: Path) -> None:
    with running_gateway(gateway_settings(tmp_path)) as gateway:
        runtime = gateway.runtime
        add_user(runtime.engine, runtime.clock, "ada", "user")
        add_user(runtime.engine, runtime.clock, "root", "admin")  # a local admin token needs its row
        admin = {"Authorization": f"Bearer {runtime.tokens.issue('root', 'admin')}"}
        made: dict[str, str] = {}

        def make(change: Change) -> None:
            if change.path.endswith("/ack"):
                made["id"] = _open_incident(gateway)
            answer = gateway.client.request(change.method, change.path.format(**made), headers=admin,
                                            json=change.body)
            assert answer.status_code in (200, 201), (change.action, answer.text)
            if change.path == "/v1/admin/rollouts":
                made["id"] = str(answer.json()["id"])
            if change.path == "/v1/admin/budgets":
                made["budget"] = str(answer.json()["id"])

        _walk(runtime.engine, API, "root", make)


def test_every_admin_change_from_the_cli_is_one_ledger_entry_by_the_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = tmp_path / "cli.db"
    monkeypatch.setenv("OPSGATE_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("OPSGATE_JWT_SECRET", secrets.token_urlsafe(48))
    monkeypatch.setattr("getpass.getuser", lambda: "carol")
    runner = CliRunner()
    assert runner.invoke(app, ["toggles", "list"]).exit_code == 0  # migrates and seeds the toggles
    engine = make_engine(f"sqlite:///{db}")
    made: dict[str, str] = {}

    def make(change: Change) -> None:
        args = [a.format(**made) for a in change.body["args"]] if change.body else []
        result = runner.invoke(app, [*change.path.split(), *args])
        assert result.exit_code == 0, (change.action, result.output)
        if change.path == "rollout start":
            made["id"] = str(max(e["rollout_id"] for e in entries(engine, "rollout.decision")))

    _walk(engine, CLI, "cli:carol", make)
    engine.dispose()


def _open_incident(gateway: Gateway) -> str:
    finding = Finding("p99_latency", {"operation": OP}, True, Severity.P2, "6000 ms", "slow", "p99 slow")
    gateway.runtime.incidents.observe(finding)
    [incident] = gateway.runtime.incidents.list("open")
    return str(incident["id"])


def _cli_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """A fresh SQLite database the CLI uses (as login ``carol``), migrated; its engine."""
    db = tmp_path / "cli.db"
    monkeypatch.setenv("OPSGATE_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("OPSGATE_JWT_SECRET", secrets.token_urlsafe(48))
    monkeypatch.setenv("OPSGATE_MASTER_KEY", base64.b64encode(secrets.token_bytes(32)).decode())
    monkeypatch.setattr("getpass.getuser", lambda: "carol")
    assert CliRunner().invoke(app, ["toggles", "list"]).exit_code == 0  # migrates
    return make_engine(f"sqlite:///{db}")


def test_seeding_never_changes_a_role_off_the_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _cli_database(tmp_path, monkeypatch)
    clock = SystemClock()
    assert add_user(engine, clock, "ada", "admin") is True
    assert add_user(engine, clock, "ada", "admin") is False  # already so: nothing to do
    with pytest.raises(ValueError, match="role change is ledgered: `opsgate users add USER_ID --role user`"):
        add_user(engine, clock, "ada", "user")
    assert get_role(engine, "ada") == "admin"
    assert entries(engine, "user.role_set") == []
    engine.dispose()


def test_users_add_without_role_keeps_an_existing_users_role(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = _cli_database(tmp_path, monkeypatch)
    runner = CliRunner()
    made = runner.invoke(app, ["users", "add", "ada", "--role", "admin"])
    assert made.exit_code == 0 and "created ada (admin)" in made.output, made.output
    emailed = runner.invoke(app, ["users", "add", "ada", "--email", "ada@example.org"])
    assert emailed.exit_code == 0 and "updated ada (admin)" in emailed.output, emailed.output
    assert get_role(engine, "ada") == "admin"
    assert [(e["role"], e["before"]) for e in entries(engine, "user.role_set")] == [("admin", None)]
    fresh = runner.invoke(app, ["users", "add", "bea"])
    assert fresh.exit_code == 0 and "created bea (user)" in fresh.output, fresh.output
    assert get_role(engine, "bea") == "user"
    engine.dispose()


@pytest.mark.parametrize(("args", "stdin", "message"), [
    (["--password"], "short\nshort\n", "12 to 1024"),
    (["--email", "not-an-address"], None, "not an email address"),
    (["--email", "ada@example.org"], None, "another user has this email address"),
])
def test_users_add_with_bad_input_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], stdin: str | None, message: str,
) -> None:
    engine = _cli_database(tmp_path, monkeypatch)
    runner = CliRunner()
    assert runner.invoke(app, ["users", "add", "ada", "--email", "ada@example.org"]).exit_code == 0
    before = entries(engine, "user.role_set")
    result = runner.invoke(app, ["users", "add", "bob", "--role", "operator", *args], input=stdin)
    assert result.exit_code == 2 and message in result.output, result.output
    assert entries(engine, "user.role_set") == before
    with pytest.raises(NotFound):
        get_role(engine, "bob")
    engine.dispose()
