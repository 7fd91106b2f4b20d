"""The synthetic users and the sampled traffic of a rehearsal (pure; no I/O).

- Population: ``users`` ids ``user-00000``...; a seeded ``ACTIVE_SHARE`` of them use the app during
  the run (the rest never show up, as in any daily-active/total ratio).
- Opt-in: the first time the app offers an active user an operation (toggle enabled, the user's
  Unleash bucket within the percentage, exactly what ``GET /v1/me/settings`` reports), the user
  decides once for all nine operations: ``OPT_IN_SHARE`` opt in. About ``CHURN_PER_HOUR`` decided
  users change their mind per simulated hour.
- Sampling: a window of ``w`` seconds at rollout percentage ``p`` carries
  ``calls_per_minute * p / 100 * w / 60`` calls of opted-in users the app offers an operation to
  (fractions carried over, at least ``MIN_CALLS_PER_WINDOW`` while the rollout serves anyone), plus
  ``STRAYS_PER_WINDOW`` calls from stale clients that ignore the settings (they expect a 403).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from opsgate.rollout.bucketing import bucket
from opsgate.rollout.controller import Plan, Stage

CADENCE_S = (300, 600, 900)
"""The seed's monitoring cadence per phase: every 5 min at 5 %, 10 min at 25 %, 15 min at 100 %."""
SEED_HOURS = 48
ACTIVE_SHARE = 0.1
OPT_IN_SHARE = 0.7
CHURN_PER_HOUR = 1.0
MIN_CALLS_PER_WINDOW = 2
STRAYS_PER_WINDOW = 1
MAX_DRAWS = 500


def cadence_s(stage_index: int) -> int:
    """Seconds between controller evaluations in stage ``stage_index`` (observation: 15 min)."""
    return CADENCE_S[min(stage_index, len(CADENCE_S) - 1)]


def scaled_plan(hours: float) -> Plan:
    """The seed's plan with every duration scaled by ``hours / 48`` (48 h: the plan itself)."""
    default = Plan()
    factor = hours / SEED_HOURS
    stages = tuple(Stage(s.percentage, max(1, round(s.seconds * factor))) for s in default.stages)
    return Plan(stages, round(default.observation_s * factor))


@dataclass(frozen=True, slots=True)
class Gate:
    """What the app knows of one operation's toggle (from ``GET /v1/admin/toggles``)."""

    enabled: bool
    percentage: int
    group_id: str

    def offers(self, user_id: str) -> bool:
        """Whether the app shows the operation to ``user_id`` (opt-in aside)."""
        return self.enabled and bucket(self.group_id, user_id) <= self.percentage


@dataclass
class Population:
    """Users, their opt-in decisions and the seeded random stream every draw comes from."""

    users: int
    seed: int
    rng: random.Random = field(init=False)
    active: list[str] = field(init=False)
    decided: dict[str, bool] = field(default_factory=dict)
    _carry: float = 0.0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        everyone = [f"user-{i:05d}" for i in range(self.users)]
        self.active = sorted(self.rng.sample(everyone, max(1, math.ceil(self.users * ACTIVE_SHARE))))

    def calls_for(self, percentage: int, window_s: float, calls_per_minute: float) -> int:
        """How many offered calls a window carries (see the module docstring)."""
        if percentage <= 0:
            self._carry = 0.0
            return 0
        self._carry += calls_per_minute * percentage / 100 * window_s / 60
        n = max(MIN_CALLS_PER_WINDOW, math.floor(self._carry))
        self._carry = max(0.0, self._carry - n)
        return n

    def draw(self, gates: Mapping[str, Gate], n: int) -> tuple[list[tuple[str, str]], list[str]]:
        """``n`` calls ``(user_id, operation)`` of opted-in users the app offers the operation to,
        and the users deciding on their opt-in for the first time (decide before calling)."""
        ops = sorted(gates)
        calls: list[tuple[str, str]] = []
        deciding: list[str] = []
        for _ in range(n * MAX_DRAWS):
            if len(calls) == n:
                break
            user, op = self.rng.choice(self.active), self.rng.choice(ops)
            if not gates[op].offers(user):
                continue
            if user not in self.decided:
                self.decided[user] = self.rng.random() < OPT_IN_SHARE
                deciding.append(user)
            if self.decided[user]:
                calls.append((user, op))
        return calls, deciding

    def strays(self, operations: list[str]) -> list[tuple[str, str]]:
        """``STRAYS_PER_WINDOW`` calls from stale clients, whatever the toggles say."""
        ops = sorted(operations)
        return [(self.rng.choice(self.active), self.rng.choice(ops)) for _ in range(STRAYS_PER_WINDOW)]

    def churn(self, window_s: float) -> list[str]:
        """Decided users who change their mind in this window (their decision is flipped here)."""
        changed = []
        if self.decided and self.rng.random() < CHURN_PER_HOUR * window_s / 3600:
            user = self.rng.choice(sorted(self.decided))
            self.decided[user] = not self.decided[user]
            changed.append(user)
        return changed
