"""A small per-user budget is spendable (issue 16): a $0.05 daily budget for one user admits
sequential email-classify calls, over HTTP against the sandboxes with the default chain, until
what is left is less than one call's worst case; then the next call gets 402 budget_exceeded."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy import select
from tests.gateways import gateway_settings, running_gateway
from tests.paths import EXAMPLES

from opsgate.clock import SystemClock
from opsgate.metering.budgets import budget_statuses, set_budget, usd_to_micro
from opsgate.metering.models import ANY, budget_reservations
from opsgate.security.auth import TokenService

BODY = {"raw": (EXAMPLES / "email-classify.eml").read_text()}


def test_a_five_cent_daily_user_budget_admits_calls_until_less_than_one_worst_case_is_left(
    tmp_path: Path,
) -> None:
    settings = gateway_settings(tmp_path)
    with running_gateway(settings) as gateway:
        engine = gateway.runtime.engine
        limit = usd_to_micro("0.05")
        set_budget(engine, SystemClock(), user_id="alice", operation=ANY, period="day", limit_micro_usd=limit)
        token = TokenService(settings, SystemClock()).issue("alice", "user")
        with httpx.Client(base_url=gateway.base_url, timeout=60,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            responses = []
            while not responses or responses[-1].status_code == 200:
                responses.append(client.post("/v1/operations/email-classify", json=BODY))
                assert len(responses) < 100
        with engine.connect() as conn:
            held = conn.execute(select(budget_reservations.c.worst_micro_usd)).scalars().all()
        [status] = budget_statuses(engine, SystemClock().now())

    *admitted, refused = responses
    assert len(admitted) >= 5 and refused.status_code == 402
    assert refused.json()["code"] == "budget_exceeded"
    spent = sum(r.json()["cost_micro_usd"] for r in admitted)
    assert (status.spent_micro_usd, status.reserved_micro_usd) == (spent, 0)
    left = limit - spent
    one_call = max(held)  # every call held the same worst case (same prompt, no extension)
    assert set(held) == {one_call} and 0 <= left < one_call
