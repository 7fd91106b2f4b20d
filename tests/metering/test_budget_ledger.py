"""A budget change is an admin change: one ``budget.set`` ledger entry (actor, scope, period,
limit and policy before and after), committed in the transaction of the row, whether the change
comes from ``PUT /v1/admin/budgets``, ``opsgate budgets set`` or :func:`set_budget` itself
(docs/security.md: every admin change is written to the ledger before it takes effect)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from tests.gateways import gateway_settings, running_gateway
from tests.ledgered import entries
from tests.stores import migrated_engine
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.clock import ManualClock
from opsgate.ledger.errors import LedgerUnavailable
from opsgate.ledger.verify import verify
from opsgate.ledger.writer import Ledger
from opsgate.errors import NotFound
from opsgate.metering.budgets import budget_statuses, delete_budget, set_budget
from opsgate.metering.errors import BudgetConflict
from opsgate.metering.models import ANY, budget_counters, budget_outcomes, budget_reservations, budgets
from opsgate.metering.reservations import expire_reservations, reserve, settle
from opsgate.security.auth import TokenService
from opsgate.security.users import add_user
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
        add_user(gateway.runtime.engine, gateway.runtime.clock, "root", "admin")  # its admin token needs the row
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


def _rows_of(engine: Engine, budget_id: int) -> dict[str, int]:
    """How many rows of each budget table still name ``budget_id``."""
    with engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t).where(
                    (t.c.id if t is budgets else t.c.budget_id) == budget_id)).scalar_one()
                for t in (budgets, budget_counters, budget_reservations, budget_outcomes)}


def test_a_deletion_waits_for_open_reservations_and_late_settlements_never_fail(store: Engine) -> None:
    clock = ManualClock(NOW)
    with Ledger(store, clock) as ledger:
        whole = set_budget(ledger, clock, actor="root", user_id=ANY, operation=ANY, period="day",
                           limit_micro_usd=100_000)
        alice = set_budget(ledger, clock, actor="root", user_id="alice", operation=ANY, period="day",
                           limit_micro_usd=50_000)
        call = {"user_id": "alice", "operation": "email-classify", "worst_micro_usd": 10_000, "ttl_s": 60}
        held = reserve(store, clock, request_id="r1", **call)
        with pytest.raises(BudgetConflict, match=r"1 call\(s\) in flight .* expires at 2026-12-05T09:01:00\+00:00"):
            delete_budget(ledger, actor="root", budget_id=alice.id)
        assert entries(store, "budget.delete") == [] and _rows_of(store, alice.id)["budgets"] == 1
        assert settle(store, clock, held, 4_000, unknown_usage=False).over_limit == ()
        late = reserve(store, clock, request_id="r2", **call)
        clock.advance(61)
        assert expire_reservations(store, clock) == ["r2"]  # charged its worst case, 10,000
        gone = delete_budget(ledger, actor="ops", budget_id=alice.id)
        with pytest.raises(NotFound, match="no such budget"):
            delete_budget(ledger, actor="ops", budget_id=alice.id)
    assert gone == alice
    assert entries(store, "budget.delete") == [
        {"actor": "ops", "budget_id": alice.id, "user_id": "alice", "operation": ANY, "period": "day",
         "scope": "user:alice", "before": {"limit_micro_usd": 50_000, "on_exhausted": "refuse"}}]
    assert _rows_of(store, alice.id) == {"budgets": 0, "budget_counters": 0, "budget_reservations": 0,
                                         "budget_outcomes": 0}
    settled = settle(store, clock, late, 3_000, unknown_usage=False)  # the call expired, then came back
    assert (settled.charged_micro_usd, settled.over_limit) == (3_000, ())
    assert [(s.budget.id, s.spent_micro_usd, s.reserved_micro_usd) for s in budget_statuses(store, clock.now())] == [
        (whole.id, 7_000, 0)]
    assert verify(store).ok


def test_deleting_an_unknown_budget_writes_nothing(tmp_path: Path) -> None:
    engine, clock = migrated_engine(tmp_path), ManualClock(NOW)
    with Ledger(engine, clock) as ledger, pytest.raises(NotFound):
        delete_budget(ledger, actor="root", budget_id=7)
    assert entries(engine, "budget.delete") == []
    engine.dispose()


def test_the_admin_api_deletes_a_budget_as_the_admin(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path)
    tokens = TokenService(settings, ManualClock(datetime.now(UTC)))
    admin = {"Authorization": f"Bearer {tokens.issue('root', 'admin')}"}
    with running_gateway(settings) as gateway:
        add_user(gateway.runtime.engine, gateway.runtime.clock, "root", "admin")  # its admin token needs the row
        runtime = gateway.runtime
        made = gateway.client.put("/v1/admin/budgets", headers=admin,
                                  json={"user_id": "alice", "period": "day", "limit_usd": "0.010"}).json()
        unknown = gateway.client.delete(f"/v1/admin/budgets/{made['id'] + 1}", headers=admin)
        assert (unknown.status_code, unknown.headers["content-type"], unknown.json()["code"]) == (
            404, "application/problem+json", "not_found")
        held = reserve(runtime.engine, runtime.clock, request_id="r1", user_id="alice",
                       operation="email-classify", worst_micro_usd=1_000, ttl_s=60)
        busy = gateway.client.delete(f"/v1/admin/budgets/{made['id']}", headers=admin)
        assert (busy.status_code, busy.json()["code"]) == (409, "budget_conflict")
        settle(runtime.engine, runtime.clock, held, 500, unknown_usage=False)
        done = gateway.client.delete(f"/v1/admin/budgets/{made['id']}", headers=admin)
        assert done.status_code == 200, done.text
        assert done.json() == {"deleted": {"id": made["id"], "user_id": "alice", "operation": ANY, "period": "day",
                                           "scope": "user:alice", "limit_micro_usd": 10_000, "on_exhausted": "refuse"}}
        assert gateway.client.get("/v1/admin/budgets", headers=admin).json() == {"budgets": []}
        assert [e["actor"] for e in entries(runtime.engine, "budget.delete")] == ["root"]


def test_the_cli_deletes_a_budget_as_the_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "cli.db"
    monkeypatch.setenv("OPSGATE_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("OPSGATE_JWT_SECRET", secrets.token_urlsafe(48))
    monkeypatch.setattr("getpass.getuser", lambda: "carol")
    runner = CliRunner()
    assert runner.invoke(app, ["budgets", "set", "--global", "--period", "day", "--limit-usd", "0.02"]).exit_code == 0
    for args, message in ((["--user", "bob", "--period", "day"], "no such budget"),
                          (["--global", "--period", "week"], "period must be one of day, month"),
                          (["--period", "day"], "give --global, --scope shadow, or --user")):
        refused = runner.invoke(app, ["budgets", "delete", *args])
        assert refused.exit_code == 2 and message in refused.output, refused.output
    deleted = runner.invoke(app, ["budgets", "delete", "--global", "--period", "day"])
    assert deleted.exit_code == 0 and "deleted the global day budget ($0.020000)" in deleted.output, deleted.output
    engine = make_engine(f"sqlite:///{db}")
    assert [(e["actor"], e["scope"]) for e in entries(engine, "budget.delete")] == [("cli:carol", "global")]
    assert budget_statuses(engine, NOW) == []
    engine.dispose()
