"""Shadow calls of a variant rollout (issue 17, item 4): how a shadow answer is judged against the
live answer, and what a rollout's shadow calls add up to.

A shadow call sends a sampled live call to the candidate as well, after the user has the live
answer; the pipeline runs it (:mod:`opsgate.pipeline`) and records one ``shadow_calls`` row per
sampled call. :func:`agrees` is the issue's rule: ``email-classify`` the same ``category`` and
``priority``; ``calendar-time`` the same recommended slots (the set of ``(start, end)``, whatever
their rank); every other operation: the shadow answer passed the operation's schema (it exists).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, case, func, select

from opsgate.rollout.models import shadow_calls

OK, ERROR, REFUSED = "ok", "error", "refused"
"""``shadow_calls.status``: answered and schema-valid, failed after it was sent, refused by the
``shadow`` budget scope before it was sent."""


def agrees(operation: str, live: Mapping[str, Any], shadow: Mapping[str, Any] | None) -> bool:
    """Whether the shadow answer ``shadow`` (the operation's output as JSON, None when the shadow
    call failed) agrees with the live answer ``live`` (see the module docstring)."""
    if shadow is None:
        return False
    if operation == "email-classify":
        return (live["category"], live["priority"]) == (shadow["category"], shadow["priority"])
    if operation == "calendar-time":
        return _slots(live) == _slots(shadow)
    return True


def _slots(output: Mapping[str, Any]) -> set[tuple[str, str]]:
    return {(slot["start"], slot["end"]) for slot in output["recommended"]}


@dataclass(frozen=True, slots=True)
class ShadowReport:
    """A rollout's shadow calls: ``percent`` sampled, ``active`` (shadowing now), ``calls`` sent
    (``errors`` of them failed), ``agreed`` with the live answer, ``refused_budget`` never sent
    for lack of ``shadow`` budget, and over the calls that succeeded the live and shadow cost in
    micro-USD."""

    percent: int
    active: bool
    calls: int = 0
    agreed: int = 0
    errors: int = 0
    refused_budget: int = 0
    live_cost_micro_usd: int = 0
    shadow_cost_micro_usd: int = 0

    def to_json(self) -> dict[str, Any]:
        """API shape: the fields plus ``agreement_pct`` (2 decimals) and ``cost_ratio`` shadow ÷
        live per call (3 decimals), each None when there is nothing to divide by."""
        pct = round(100 * self.agreed / self.calls, 2) if self.calls else None
        ratio = (round(self.shadow_cost_micro_usd / self.live_cost_micro_usd, 3)
                 if self.live_cost_micro_usd else None)
        return {"percent": self.percent, "active": self.active, "calls": self.calls,
                "agreed": self.agreed, "agreement_pct": pct, "errors": self.errors,
                "refused_budget": self.refused_budget, "live_cost_micro_usd": self.live_cost_micro_usd,
                "shadow_cost_micro_usd": self.shadow_cost_micro_usd, "cost_ratio": ratio}


def shadow_report(engine: Engine, operation: str, variant: str, since: datetime, percent: int,
                  active: bool) -> ShadowReport:
    """The :class:`ShadowReport` of ``variant``'s shadow calls of ``operation`` since ``since``
    (the rollout's start)."""
    c = shadow_calls.c
    query = (select(c.status, func.count(), func.sum(case((c.agreed, 1), else_=0)),
                    func.sum(c.live_cost_micro_usd), func.sum(c.shadow_cost_micro_usd))
             .where(c.operation == operation, c.variant == variant, c.created_at >= since)
             .group_by(c.status))
    by_status: dict[str, tuple[int, int, int, int]] = {}
    with engine.connect() as conn:
        for status, n, agreed, live, shadow in conn.execute(query):
            by_status[status] = (n, int(agreed or 0), int(live or 0), int(shadow or 0))
    ok = by_status.get(OK, (0, 0, 0, 0))
    errors = by_status.get(ERROR, (0, 0, 0, 0))[0]
    return ShadowReport(percent, active, calls=ok[0] + errors, agreed=ok[1], errors=errors,
                        refused_budget=by_status.get(REFUSED, (0, 0, 0, 0))[0],
                        live_cost_micro_usd=ok[2], shadow_cost_micro_usd=ok[3])
