"""A small per-user budget is spendable (issue 16): a $0.05 daily budget for one user admits
sequential email-classify calls, over HTTP against the sandboxes with the default chain, until
what is left is less than one call's *exact* worst case (its input counted by the first
target's provider once the byte bound no longer fits); then the next call gets 402
budget_exceeded."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy import select
from tests.budgets import ADMIN
from tests.gateways import gateway_settings, running_gateway
from tests.paths import EXAMPLES

from opsgate.clock import SystemClock
from opsgate.metering.budgets import budget_statuses, set_budget, usd_to_micro
from opsgate.metering.models import ANY, budget_reservations
from opsgate.security.auth import TokenService

BODY = {"raw": (EXAMPLES / "email-classify.eml").read_text()}


def test_a_five_cent_daily_user_budget_admits_calls_until_less_than_one_exact_worst_case_is_left(
    tmp_path: Path,
) -> None:
    settings = gateway_settings(tmp_path)
    with running_gateway(settings) as gateway:
        engine = gateway.runtime.engine
        limit = usd_to_micro("0.05")
        set_budget(gateway.runtime.ledger, SystemClock(), actor=ADMIN, user_id="alice", operation=ANY,
                   period="day", limit_micro_usd=limit)
        token = TokenService(settings, SystemClock()).issue("alice", "user")
        with httpx.Client(base_url=gateway.base_url, timeout=60,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            responses = []
            while not responses or responses[-1].status_code == 200:
                responses.append(client.post("/v1/operations/email-classify", json=BODY))
                assert len(responses) < 100
        with engine.connect() as conn:
            held = conn.execute(select(budget_reservations.c.worst_micro_usd)
                                .order_by(budget_reservations.c.created_at)).scalars().all()
        [status] = budget_statuses(engine, SystemClock().now())
        counts = gateway.sandbox.stats()["counts"]

    *admitted, refused = responses
    assert len(admitted) >= 5 and refused.status_code == 402
    assert refused.json()["code"] == "budget_exceeded"
    spent = sum(r.json()["cost_micro_usd"] for r in admitted)
    assert (status.spent_micro_usd, status.reserved_micro_usd) == (spent, 0)
    left = limit - spent
    # the same prompt every time, no extension: first the byte bound, then the exact count
    byte_bound, exact = max(held), min(held)
    assert set(held) == {byte_bound, exact} and exact < byte_bound
    assert held[-1] == exact and counts["anthropic"] == held.count(exact) + 1  # the refused one too
    assert 0 <= left < exact
