"""Starting rollouts at once: of N concurrent starts for one operation exactly one succeeds and the
others get RolloutConflict, on SQLite and PostgreSQL, whether they share one process's ledger or
each has its own engine and ledger writer (as separate processes or replicas do)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from tests.rollout.rollout_helpers import at_once
from tests.stores import migrated_url

from opsgate.clock import ManualClock
from opsgate.ledger.verify import verify
from opsgate.ledger.writer import Ledger
from opsgate.rollout.controller import Plan
from opsgate.rollout.errors import RolloutConflict
from opsgate.rollout.models import rollout_decisions, rollouts
from opsgate.rollout.service import Rollout, RolloutService
from opsgate.store.db import make_engine

N = 6
OP = "email-compose"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with migrated_url(request.param, tmp_path, "rollout_race") as found:
        yield found


def _service(stack: ExitStack, url: str, clock: ManualClock) -> RolloutService:
    engine = make_engine(url)
    stack.callback(engine.dispose)
    ledger = stack.enter_context(Ledger(engine, clock))
    return RolloutService(engine, ledger, clock)


def _start_at_once(services: list[RolloutService]) -> tuple[list[Rollout], list[Exception]]:
    """Each service starts a rollout of :data:`OP` in its own thread, released together."""
    return at_once([lambda s=svc: s.start_rollout([OP], Plan(), "admin") for svc in services])


def _stored(engine: Engine) -> tuple[list[tuple[int, str]], list[int]]:
    with engine.connect() as conn:
        rows = [(r.id, r.state) for r in conn.execute(select(rollouts.c.id, rollouts.c.state))]
        decided = list(conn.execute(select(rollout_decisions.c.rollout_id)).scalars())
    return rows, decided


@pytest.mark.parametrize("processes", [1, N], ids=["one-ledger", "ledger-per-process"])
def test_concurrent_rollout_starts_admit_exactly_one(url: str, processes: int) -> None:
    clock = ManualClock()
    with ExitStack() as stack:
        owners = [_service(stack, url, clock) for _ in range(processes)]
        owners[0].ensure_toggles([OP])
        started, refused = _start_at_once([owners[i % processes] for i in range(N)])
        assert len(started) == 1
        assert [type(e) for e in refused] == [RolloutConflict] * (N - 1)
        assert {str(e) for e in refused} == {f"rollout {started[0].id} is still running for {OP}"}
        engine = owners[0].engine
        assert _stored(engine) == ([(started[0].id, "running")], [started[0].id])
        assert owners[0].get_toggle(OP).rollout_percentage == Plan().percentage(0)
        assert verify(engine).ok
