"""Rollout decisions racing across processes (each service its own engine and ledger writer, as
replicas have), on SQLite and PostgreSQL. Each race is forced into its bad order with real
threads: one service's append of a given kind is held until the other service has finished.

- A decision overtaken by a newer one never writes its own (older) toggle percentage or variant
  assignment: the toggle follows the rollout row. (Outside trial: two ``serve`` processes, 8
  concurrent advances, rollout at 100 % and the toggle at 25 %, ledger ``toggle.set`` 100 -> 25.)
- A rollback whose save finds the row changed re-reads it and is applied anyway; it was refused
  with 409 ``rollout_conflict`` and the advance won.
- ``rollback_operations`` (``opsgate rollout rollback --all``) attempts every rollout and reports
  the ones it could not roll back; it stopped at the first error, leaving the rest running.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from tests import ledgered
from tests.stores import migrated_url

from opsgate.clock import ManualClock
from opsgate.ledger.errors import LedgerUnavailable
from opsgate.ledger.verify import verify
from opsgate.ledger.writer import Ledger
from opsgate.rollout.controller import Plan, State
from opsgate.rollout.models import rollout_decisions
from opsgate.rollout.service import RollbackFailure, RolloutService
from opsgate.store.db import make_engine

OP = "task-breakdown"
OTHER = "calendar-time"
WAIT_S = 60  # a guard against a hang only: every wait returns as soon as the other side acts


class HeldLedger(Ledger):
    """A ledger whose next append of ``kind`` (see :meth:`hold`) waits, once it is reached, until
    :meth:`release`; ``refuse`` makes matching appends fail as an unavailable ledger would."""

    def __init__(self, engine: Engine, clock: ManualClock) -> None:
        super().__init__(engine, clock)
        self.held: str | None = None
        self.reached = threading.Event()
        self.released = threading.Event()
        self.refuse: Callable[[str, dict[str, Any]], bool] = lambda kind, payload: False

    def hold(self, kind: str) -> None:
        self.held = kind
        self.reached.clear()
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    def append_sync(self, kind: str, payload: dict[str, Any], *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if self.refuse(kind, payload):
            raise LedgerUnavailable("the ledger transaction failed")
        if kind == self.held:
            self.held = None
            self.reached.set()
            assert self.released.wait(WAIT_S)
        return super().append_sync(kind, payload, *args, **kwargs)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with migrated_url(request.param, tmp_path, "races") as found:
        yield found


def _two(stack: ExitStack, url: str) -> tuple[RolloutService, RolloutService]:
    clock = ManualClock()
    found = []
    for _ in range(2):
        engine = make_engine(url)
        stack.callback(engine.dispose)
        found.append(RolloutService(engine, stack.enter_context(HeldLedger(engine, clock)), clock))
    found[0].ensure_toggles([OP, OTHER])
    return found[0], found[1]


def _held(service: RolloutService, kind: str, call: Callable[[], Any], meanwhile: Callable[[], Any]) -> list[Any]:
    """Run ``call`` in a thread until it reaches its append of ``kind``, run ``meanwhile`` to the
    end, then let ``call`` go on; what ``call`` returned or raised."""
    ledger = service.ledger
    assert isinstance(ledger, HeldLedger)
    ledger.hold(kind)
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # checked by the caller
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert ledger.reached.wait(WAIT_S)
    try:
        meanwhile()
    finally:
        ledger.release()
        thread.join()
    return outcome


def test_a_stale_advance_never_writes_its_older_percentage(url: str) -> None:
    with ExitStack() as stack:
        a, b = _two(stack, url)
        rollout = a.start_rollout([OP], Plan(), "admin")  # 5 %
        # a saves 5 -> 25 and is held before its toggle write; b saves 25 -> 100 and writes it
        outcome = _held(a, "toggle.set", lambda: a.advance(rollout.id, "admin"),
                        lambda: b.advance(rollout.id, "admin"))
        assert [d.percentage for d in outcome] == [25]
        saved = a.get_rollout(rollout.id).state
        assert (saved.stage_index, saved.plan.percentage(saved.stage_index)) == (2, 100)
        toggle = a.get_toggle(OP)
        assert (toggle.enabled, toggle.rollout_percentage) == (True, 100)
        changes = [(e["before"]["rollout_percentage"], e["after"]["rollout_percentage"], e["rollout_version"])
                   for e in ledgered.entries(a.engine, "toggle.set")]
        assert changes == [(0, 5, 0), (5, 100, 2)]  # a's late write had nothing left to do
        assert verify(a.engine).ok


def test_a_start_overtaken_by_an_advance_enables_the_advanced_stage(url: str) -> None:
    with ExitStack() as stack:
        a, b = _two(stack, url)

        def advance_started() -> None:
            [running] = b.list_rollouts([State.RUNNING])
            b.advance(running.id, "admin")

        outcome = _held(a, "toggle.set", lambda: a.start_rollout([OP], Plan(), "admin"), advance_started)
        toggle = a.get_toggle(OP)
        assert (toggle.enabled, toggle.kill_switch, toggle.rollout_percentage) == (True, False, 25)
        assert a.get_rollout(outcome[0].id).state.stage_index == 1
        assert verify(a.engine).ok


def test_a_variant_advance_overtaken_by_a_rollback_leaves_every_user_on_the_live_variant(url: str) -> None:
    with ExitStack() as stack:
        a, b = _two(stack, url)
        rollout = a.start_rollout([OP], Plan(), "admin", variant="cand")
        assert (a.assignment(OP).candidate, a.assignment(OP).candidate_percentage) == ("cand", 5)
        _held(a, "variant.set", lambda: a.advance(rollout.id, "admin"),
              lambda: b.rollback(rollout.id, "bad answers", "oncall"))
        assert a.get_rollout(rollout.id).state.state is State.ROLLING_BACK
        assignment = a.assignment(OP)
        assert (assignment.live, assignment.candidate, assignment.candidate_percentage) == ("default", None, 0)
        after = [(e["after"]["candidate"], e["after"]["candidate_percentage"]) for e in ledgered.entries(a.engine, "variant.set")]
        assert after == [("cand", 5), (None, 0)]
        assert verify(a.engine).ok


@pytest.mark.parametrize("variant", [None, "cand"], ids=["toggle", "variant"])
def test_a_rollback_racing_an_advance_is_applied_again_and_wins(url: str, variant: str | None) -> None:
    with ExitStack() as stack:
        a, b = _two(stack, url)
        rollout = a.start_rollout([OP], Plan(), "admin", variant=variant)
        # a reads the rollout (version 0) and is held before saving; b's advance saves version 1
        outcome = _held(a, "rollout.decision", lambda: a.rollback(rollout.id, "bad answers", "oncall"),
                        lambda: b.advance(rollout.id, "admin"))
        assert [d.action.value for d in outcome] == ["rollback"]
        final = a.get_rollout(rollout.id)
        assert (final.state.state, final.version) == (State.ROLLING_BACK, 2)
        with a.engine.connect() as conn:
            actions = conn.execute(select(rollout_decisions.c.action).where(
                rollout_decisions.c.rollout_id == rollout.id).order_by(rollout_decisions.c.id)).scalars().all()
        assert actions == ["start", "promote", "rollback"]
        if variant is None:
            assert a.get_toggle(OP).enabled is False
        else:
            assert (a.assignment(OP).live, a.assignment(OP).candidate) == ("default", None)
        assert verify(a.engine).ok


def test_rollback_all_attempts_every_rollout_and_reports_the_one_it_could_not(url: str) -> None:
    with ExitStack() as stack:
        a, _ = _two(stack, url)
        first = a.start_rollout([OP], Plan(), "admin")
        second = a.start_rollout([OTHER], Plan(), "admin")
        ledger = a.ledger
        assert isinstance(ledger, HeldLedger)
        # the newest rollout is rolled back first: its decision cannot be written
        ledger.refuse = lambda kind, payload: kind == "rollout.decision" and payload.get("rollout_id") == second.id
        report = a.rollback_operations(None, "incident 7", "oncall")
        assert report.failed == [RollbackFailure(second.id, (OTHER,), "the ledger transaction failed")]
        assert OP in report.disabled and OTHER not in report.disabled
        assert a.get_rollout(first.id).state.state is State.ROLLING_BACK
        assert a.get_toggle(OP).enabled is False
        assert a.get_rollout(second.id).state.state is State.RUNNING
        assert verify(a.engine).ok
