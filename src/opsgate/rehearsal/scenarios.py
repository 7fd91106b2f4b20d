"""Rehearsal scenarios: which sandbox faults happen when, and what the run must end with.

A scenario only scripts the *world* (provider faults, triggered when the rollout reaches a stage);
every rollout decision comes from the real controller fed from ``ai_operation_log``. ``expect_*``
are what the scenario's checks (the report's Test Pass Rate) compare the outcome with.

A variant scenario (``candidate`` set) rolls out a candidate variant of one operation instead of
switching the operations on: all traffic goes to that operation, the stages decide which users the
candidate serves, and the checks add which variant is live at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

STAGE_25 = 1
"""Index of the 25 % stage in the seed's plan (5 % -> 25 % -> 100 %)."""
GOOD_PROMPT = (
    "Classify one email for the person who received it. Pick exactly one category:\n${labels}\n"
    "Set priority (low, normal, high, urgent) for that person, needs_reply when someone expects an "
    "answer from them, confidence in 0..1 and a one-sentence reason. Answer with the JSON object of "
    "the given schema only.\n"
)
"""The good-model scenario's candidate prompt version ``v2`` of email-classify."""


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
class Candidate:
    """The candidate variant of a variant scenario: ``name`` of ``operation``, its ``chain``, the
    ``price`` (USD per million tokens, input and output) its model is billed at when the price
    data has none, and the text of its prompt version ``prompt`` (written to the run's
    ``prompts_dir``; None: the package's v1)."""

    operation: str
    name: str
    chain: tuple[str, ...]
    price: tuple[str, str] | None = None
    prompt: str | None = None


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
    candidate: Candidate | None = None
    expect_live: str | None = None


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
        Scenario("bad-model",
                 "a candidate variant of email-classify costs 3x the live one per call and misses its schema on "
                 "8 % of answers: rolled back, every user back on the live variant, alert delivered",
                 (Fault("schema:deepseek:8", 0),),
                 expect_rollback=True, expect_fallback=False, expect_percentage=0,
                 candidate=Candidate("email-classify", "pricey-model", ("deepseek/deepseek-pricey",),
                                     price=("15", "75")),
                 expect_live="default"),
        Scenario("good-model",
                 "a candidate variant of email-classify (a cheaper model and a new prompt version) is healthy: "
                 "promoted 5 % -> 25 % -> 100 %, live at hour 48",
                 (), expect_rollback=False, expect_fallback=False, expect_percentage=100,
                 candidate=Candidate("email-classify", "flash-v2", ("deepseek/deepseek-flash",),
                                     prompt=GOOD_PROMPT),
                 expect_live="flash-v2"),
    )
}
"""The scenarios by name."""


def get_scenario(name: str) -> Scenario:
    """The scenario called ``name``; ``KeyError`` naming the known ones otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}; expected one of {', '.join(SCENARIOS)}") from None
