"""A budget change is an admin change: one ``budget.set`` ledger entry (actor, scope, period,
limit and policy before and after), committed in the transaction of the row, whether the change
comes from ``PUT /v1/admin/budgets``, ``opsgate budgets set`` or :func:`set_budget` itself
(docs/security.md: every admin change is written to the ledger before it takes effect)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from tests.gateways import gateway_settings, running_gateway
from tests.ledgered import entries
from tests.stores import migrated_engine
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.clock import ManualClock
from opsgate.ledger.errors import LedgerUnavailable
from opsgate.ledger.verify import verify
from opsgate.ledger.writer import Ledger
from opsgate.metering.budgets import budget_statuses, set_budget
from opsgate.metering.models import ANY
from opsgate.security.auth import TokenService
from opsgate.store.db import make_engine

NOW = datetime(2026, 12, 5, 9, tzinfo=UTC)


def _entry(before: dict[str, object] | None, after: dict[str, object], actor: str = "root",
           user_id: str = "alice", scope: str = "user:alice") -> dict[str, object]:
    return {"actor": actor, "user_id": user_id, "operation": ANY, "period": "day", "scope": scope,
            "before": before, "after": after}


def test_each_change_is_one_entry_with_the_limit_and_policy_before_and_after(store: Engine) -> None:
    clock = ManualClock(NOW)
    with Ledger(store, clock) as ledger:
        first = set_budget(ledger, clock, actor="root", user_id="alice", operation=ANY, period="day",
                           limit_micro_usd=10_000)
        second = set_budget(ledger, clock, actor="ops", user_id="alice", operation=ANY, period="day",
                            limit_micro_usd=1_000_000_000, on_exhausted="cheaper")
    assert first.id == second.id and (second.limit_micro_usd, second.on_exhausted) == (10**9, "cheaper")
    assert entries(store, "budget.set") == [
        _entry(None, {"limit_micro_usd": 10_000, "on_exhausted": "refuse"}),
        _entry({"limit_micro_usd": 10_000, "on_exhausted": "refuse"},
               {"limit_micro_usd": 10**9, "on_exhausted": "cheaper"}, actor="ops"),
    ]
    report = verify(store)
    assert (report.ok, report.entries) == (True, 2)


def test_a_change_whose_entry_cannot_be_written_leaves_the_budget_as_it_was(tmp_path: Path) -> None:
    engine, clock = migrated_engine(tmp_path), ManualClock(NOW)
    with Ledger(engine, clock) as ledger:
        set_budget(ledger, clock, actor="root", user_id=ANY, operation=ANY, period="day",
                   limit_micro_usd=5_000)
        with engine.begin() as conn:  # the ledger refuses every new entry from here on
            conn.execute(text("CREATE TRIGGER refuse_entries BEFORE INSERT ON ledger_entries "
                              "BEGIN SELECT RAISE(ABORT, 'ledger refused'); END"))
        with pytest.raises(LedgerUnavailable):
            set_budget(ledger, clock, actor="root", user_id=ANY, operation=ANY, period="day",
                       limit_micro_usd=10**15)
        with pytest.raises(LedgerUnavailable):
            set_budget(ledger, clock, actor="root", user_id="mallory", operation=ANY, period="day",
                       limit_micro_usd=10**15)
    assert [(s.budget.scope, s.budget.limit_micro_usd) for s in budget_statuses(engine, NOW)] == [
        ("global", 5_000)]
    assert len(entries(engine, "budget.set")) == 1
    engine.dispose()


def test_the_admin_api_ledgers_the_change_as_the_admin(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path)
    tokens = TokenService(settings, ManualClock(datetime.now(UTC)))
    admin = {"Authorization": f"Bearer {tokens.issue('root', 'admin')}"}
    with running_gateway(settings) as gateway:
        for body in ({"user_id": "alice", "period": "day", "limit_usd": "0.010"},
                     {"user_id": "alice", "period": "day", "limit_usd": "0.020", "on_exhausted": "cheaper"}):
            answer = gateway.client.put("/v1/admin/budgets", headers=admin, json=body)
            assert answer.status_code == 200, answer.text
        refused = gateway.client.put("/v1/admin/budgets", headers=admin,
                                     json={"user_id": "alice", "period": "week", "limit_usd": "1"})
        assert refused.status_code == 422
        assert entries(gateway.runtime.engine, "budget.set") == [
            _entry(None, {"limit_micro_usd": 10_000, "on_exhausted": "refuse"}),
            _entry({"limit_micro_usd": 10_000, "on_exhausted": "refuse"},
                   {"limit_micro_usd": 20_000, "on_exhausted": "cheaper"}),
        ]


def test_the_cli_ledgers_the_change_as_the_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "cli.db"
    monkeypatch.setenv("OPSGATE_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("OPSGATE_JWT_SECRET", secrets.token_urlsafe(48))
    monkeypatch.setattr("getpass.getuser", lambda: "carol")
    result = CliRunner().invoke(app, ["budgets", "set", "--global", "--period", "day", "--limit-usd", "0.02"])
    assert result.exit_code == 0, result.output
    engine = make_engine(f"sqlite:///{db}")
    assert entries(engine, "budget.set") == [
        _entry(None, {"limit_micro_usd": 20_000, "on_exhausted": "refuse"}, actor="cli:carol",
               user_id=ANY, scope="global")]
    engine.dispose()
