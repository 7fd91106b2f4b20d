"""Rehearsal scenarios: which sandbox faults happen when, and what the run must end with.

A scenario only scripts the *world* (provider faults, triggered when the rollout reaches a stage);
every rollout decision comes from the real controller fed from ``ai_operation_log``. ``expect_*``
are what the scenario's checks (the report's Test Pass Rate) compare the outcome with.
"""

from __future__ import annotations

from dataclasses import dataclass

STAGE_25 = 1
"""Index of the 25 % stage in the seed's plan (5 % -> 25 % -> 100 %)."""


@dataclass(frozen=True, slots=True)
class Fault:
    """A sandbox fault profile (:mod:`opsgate.sandbox.faults`) switched on ``after_s`` simulated
    seconds (scaled with the plan) after the rollout entered stage ``stage``, for ``duration_s``
    simulated seconds (not scaled; None: until the end)."""

    profile: str
    stage: int
    after_s: int = 0
    duration_s: int | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named rehearsal: its faults and the expected end (rollout state, whether it rolled back,
    whether calls fell back to another provider)."""

    name: str
    summary: str
    faults: tuple[Fault, ...]
    expect_rollback: bool
    expect_fallback: bool
    expect_percentage: int


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("healthy", "no faults: the controller promotes 5 % -> 25 % -> 100 %",
                 (), expect_rollback=False, expect_fallback=False, expect_percentage=100),
        Scenario("bad-release",
                 "from the 25 % stage on, Claude rejects 4 % of requests (400): error spike -> automatic rollback",
                 (Fault("errors:anthropic:4", STAGE_25),),
                 expect_rollback=True, expect_fallback=False, expect_percentage=0),
        Scenario("provider-outage",
                 "2 h into the 25 % stage Claude (anthropic) is down for 40 minutes: fallback, no rollback",
                 (Fault("outage:anthropic", STAGE_25, after_s=2 * 3600, duration_s=40 * 60),),
                 expect_rollback=False, expect_fallback=True, expect_percentage=100),
    )
}
"""The scenarios by name."""


def get_scenario(name: str) -> Scenario:
    """The scenario called ``name``; ``KeyError`` naming the known ones otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}; expected one of {', '.join(SCENARIOS)}") from None
