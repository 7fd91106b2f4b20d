"""State changes and their ledger entries are one transaction, on SQLite and PostgreSQL, whether
the writers share one ledger or each has its own engine and ledger writer (as replicas do).

- Concurrent changes to one toggle (each a different field) all apply, and each ``toggle.set``
  entry's ``before`` is the previous entry's ``after``; the last ``after`` is the row. (The
  toggle was read, merged and written outside the entry's transaction: the kill switch of one
  request was undone by another's stale copy, 4 rounds of 6 in an outside trial.)
- Concurrent decisions on one rollout: a decision refused with 409 leaves no ``rollout.decision``
  entry and no history row; the entries, the history and the row agree.
- A user's opt-ins and their ``opt_in.set`` entry: when the rows cannot be written, neither the
  entry nor any change (not even the delete before the insert) remains. (They were two
  transactions: the entry stayed, describing a change that never happened.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import DBAPIError
from tests.rollout.rollout_helpers import at_once
from tests import ledgered
from tests.stores import migrated_url

from opsgate.clock import ManualClock
from opsgate.ledger.errors import LedgerUnavailable
from opsgate.ledger.verify import verify
from opsgate.ledger.writer import Ledger
from opsgate.rollout.controller import Plan
from opsgate.rollout.errors import RolloutConflict
from opsgate.rollout.models import rollout_decisions
from opsgate.rollout.service import RolloutService, ToggleChange
from opsgate.store.db import make_engine

OP = "calendar-time"
CHANGES = [ToggleChange(kill_switch=True), ToggleChange(rollout_percentage=50),
           ToggleChange(opt_in_required=True), ToggleChange(enabled=False)]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with migrated_url(request.param, tmp_path, "atomic") as found:
        yield found


def _services(stack: ExitStack, url: str, clock: ManualClock, n: int) -> list[RolloutService]:
    services = []
    for _ in range(n):
        engine = make_engine(url)
        stack.callback(engine.dispose)
        ledger = stack.enter_context(Ledger(engine, clock))
        services.append(RolloutService(engine, ledger, clock))
    return services


@pytest.mark.parametrize("processes", [1, len(CHANGES)], ids=["one-ledger", "ledger-per-process"])
def test_concurrent_toggle_changes_all_apply_and_chain_their_before_and_after(url: str, processes: int) -> None:
    clock = ManualClock()
    with ExitStack() as stack:
        services = _services(stack, url, clock, processes)
        services[0].ensure_toggles([OP])
        for _ in range(3):
            services[0].set_toggle(OP, ToggleChange(enabled=True, rollout_percentage=100, kill_switch=False,
                                                    opt_in_required=False), "admin", "reset")
            done, refused = at_once([
                (lambda s=services[i % processes], c=change: s.set_toggle(OP, c, "admin", "race"))
                for i, change in enumerate(CHANGES)])
            assert (len(done), refused) == (len(CHANGES), [])
            row = services[0].get_toggle(OP)
            assert (row.kill_switch, row.rollout_percentage, row.opt_in_required, row.enabled) == (
                True, 50, True, False)
        entries = ledgered.entries(services[0].engine, "toggle.set")
        assert len(entries) == 3 * (1 + len(CHANGES))
        for previous, entry in zip(entries, entries[1:], strict=False):
            assert entry["before"] == previous["after"]
        assert entries[-1]["after"]["kill_switch"] is True and entries[-1]["after"]["enabled"] is False
        assert verify(services[0].engine).ok


def test_a_decision_refused_with_409_leaves_no_entry_and_no_history(url: str) -> None:
    clock = ManualClock()
    with ExitStack() as stack:
        services = _services(stack, url, clock, 3)
        services[0].ensure_toggles([OP])
        rollout = services[0].start_rollout([OP], Plan(), "admin")
        done, refused = at_once([
            lambda: services[0].advance(rollout.id, "admin"),
            lambda: services[1].rollback(rollout.id, "bad", "admin"),
            lambda: services[2].advance(rollout.id, "admin"),
        ])
        assert len(done) >= 1 and len(done) + len(refused) == 3
        assert {type(e) for e in refused} <= {RolloutConflict}
        engine = services[0].engine
        decided = [e for e in ledgered.entries(engine, "rollout.decision") if e["action"] != "start"]
        with engine.connect() as conn:
            history = list(conn.execute(select(rollout_decisions.c.action).where(
                rollout_decisions.c.action != "start").order_by(rollout_decisions.c.id)).scalars())
        assert [e["action"] for e in decided] == history
        assert sorted(history) == sorted(d.action.value for d in done)
        final = services[0].get_rollout(rollout.id)
        assert final.state.state.value == decided[-1]["state_after"]
        assert final.version == len(done)
        assert verify(engine).ok


def _broken_user_settings_insert(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
    """A ``before_cursor_execute`` hook that points every insert into ``user_settings`` at a table
    that does not exist, so the database itself refuses the row write."""
    return statement.replace("INSERT INTO user_settings", "INSERT INTO user_settings_missing"), parameters


def test_an_opt_in_whose_rows_fail_leaves_neither_its_entry_nor_any_change(url: str) -> None:
    clock = ManualClock()
    with ExitStack() as stack:
        [service] = _services(stack, url, clock, 1)
        service.ensure_toggles([OP, "email-compose"])
        service.set_opt_ins("alice", {OP: True})
        event.listen(service.engine, "before_cursor_execute", _broken_user_settings_insert, retval=True)
        try:
            with pytest.raises((LedgerUnavailable, DBAPIError)) as failed:
                service.set_opt_ins("alice", {OP: False, "email-compose": True})
        finally:
            event.remove(service.engine, "before_cursor_execute", _broken_user_settings_insert)
        assert service.get_opt_ins("alice") == {OP: True, "email-compose": False}  # the delete undone too
        assert [e["choices"] for e in ledgered.entries(service.engine, "opt_in.set")] == [{OP: True}]
        assert failed.type is LedgerUnavailable  # the append's error: nothing was written
        assert service.set_opt_ins("alice", {OP: False}) == {OP: False, "email-compose": False}
        assert [e["choices"] for e in ledgered.entries(service.engine, "opt_in.set")] == [{OP: True}, {OP: False}]
        assert verify(service.engine).ok
