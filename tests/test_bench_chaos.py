"""``./dev chaos --minutes 1`` (``bench/chaos.py``) as part of the suite: its own PostgreSQL and
Redis, three replicas, two workers, the seven faults in turn; every invariant must hold (exit 0).
No timing is asserted: the machine may be loaded, only the invariants and what was injected.
And the receivers' ordering check, on hand-made delivery streams."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
from tests.paths import REPO

INVARIANTS = ("admitted_calls_closed", "chain_verifies_against_anchors", "budgets_within_limits",
              "alerts_once_in_order", "no_5xx_outside_windows", "load_held")


@pytest.fixture
def chaos() -> Iterator[ModuleType]:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        yield importlib.import_module("chaos")
    finally:
        sys.path.remove(str(REPO / "bench"))


def test_a_one_minute_chaos_run_keeps_every_invariant() -> None:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "chaos.py"), "--minutes", "1"],
                          capture_output=True, text=True, timeout=1500, cwd=REPO)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-3000:]
    for name in INVARIANTS:
        assert f"INVARIANT {name}: PASS" in out
    assert out.rstrip().endswith("RESULT: PASS")
    lines = out.splitlines()
    faults = [line.split(". ", 1)[1].split(":", 1)[0] for line in lines if re.match(r"  \d\. ", line)]
    assert faults == ["replica", "postgres", "redis", "leader", "hang", "429", "outage"]
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("window ")) + 1:
                  next(i for i, line in enumerate(lines) if line.startswith("INVARIANT"))]
    assert [row.split()[0] for row in table] == ["warm-up", *faults, "tail"]


def test_the_ordering_check_finds_duplicates_and_disorder(chaos: ModuleType) -> None:
    D = chaos.Delivery
    good = [D("discord", "inc-1", "trigger", "t1"), D("discord", "inc-1", "repeat", "t2"),
            D("discord", "inc-1", "acknowledge", "t3"), D("discord", "inc-1", "resolve", "t4"),
            D("pagerduty", "error_rate:operation=x", "trigger", "t1"),
            D("pagerduty", "error_rate:operation=x", "acknowledge", ""),
            D("pagerduty", "error_rate:operation=x", "resolve", ""),
            D("pagerduty", "error_rate:operation=x", "trigger", "t9")]
    assert chaos.order_problems(good) == []
    bad = [D("sms", "inc-2", "trigger", "t1"), D("sms", "inc-2", "trigger", "t1"),
           D("discord", "inc-3", "resolve", "t2"), D("discord", "inc-3", "trigger", "t1"),
           D("pagerduty", "k", "trigger", "t1"), D("pagerduty", "k", "resolve", ""),
           D("pagerduty", "k", "acknowledge", "")]
    assert chaos.order_problems(bad) == [
        "sms inc-2: trigger at t1 delivered twice", "sms inc-2: trigger while open",
        "discord inc-3: resolve while new", "discord inc-3: trigger at t1 after one of t2",
        "discord inc-3: trigger while resolved", "pagerduty k: acknowledge while resolved"]
