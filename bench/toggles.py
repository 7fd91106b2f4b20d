"""Toggle evaluation cost: ``ToggleSnapshot.check`` against a bare dict lookup, in one run.

Run: ``.venv/bin/python bench/toggles.py``. Goal (issue 8): <= 2 µs per check. The snapshot holds
nine operations at a 50 % rollout with opt-in required and 100 opted-in users; users are drawn
from 100,000 ids so the MurmurHash3 input varies like production traffic.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from opsgate.clock import SystemClock
from opsgate.ledger.writer import Ledger
from opsgate.operations import OPERATIONS
from opsgate.rollout.service import RolloutService, ToggleChange
from opsgate.rollout.toggles import ToggleSnapshot
from opsgate.store.db import make_engine, upgrade

CHECKS = 1_000_000


def per_call_ns(fn, pairs: list[tuple[str, str]]) -> float:  # type: ignore[no-untyped-def]
    """Best of three timed passes over ``pairs``, in nanoseconds per call."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter_ns()
        for op, user in pairs:
            fn(op, user)
        best = min(best, (time.perf_counter_ns() - started) / len(pairs))
    return best


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        engine = make_engine(url, synchronous="NORMAL")
        clock = SystemClock()
        ledger = Ledger(engine, clock)
        ledger.start()
        service = RolloutService(engine, ledger, clock)
        service.ensure_toggles(OPERATIONS)
        for op in OPERATIONS:
            service.set_toggle(op, ToggleChange(enabled=True, rollout_percentage=50), "bench")
        for u in range(0, 100_000, 1_000):  # opt-ins live in the snapshot too
            service.set_opt_ins(f"user-{u}", {"email-compose": True})
        ledger.close()
        snapshot = ToggleSnapshot(engine, clock, refresh_s=2.0)
        ops = list(OPERATIONS)
        pairs = [(ops[i % len(ops)], f"user-{(i * 7919) % 100_000}") for i in range(CHECKS)]
        table = {(op, f"user-{u}"): True for op in ops for u in range(0, 100_000, 97)}
        bare = per_call_ns(lambda op, user: table.get((op, user)), pairs)
        check = per_call_ns(snapshot.check, pairs)
        engine.dispose()
    print(f"bare dict lookup        {bare:8.0f} ns/call")
    print(f"ToggleSnapshot.check    {check:8.0f} ns/call  (goal <= 2000 ns: {'met' if check <= 2000 else 'MISSED'})")
    print(f"ratio check / dict      {check / bare:8.1f} x")


if __name__ == "__main__":
    main()
