"""A shadow stage over real HTTP against ``opsgate serve --sandbox`` (issue 17, item 4): started
with the admin API's ``shadow_percent``, funded by a ``shadow`` budget set through the admin API;
every live call is also answered by the candidate's sandbox, unseen, and GET /v1/admin/rollouts
reports the shadow calls; a spent shadow budget stops the shadow calls and nothing else."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.gateways import Gateway, gateway_settings, running_gateway
from tests.paths import EXAMPLES

from opsgate.config import VariantConfig

OP = "email-classify"
CANDIDATE = "flash-v2"
BODY = {"raw": (EXAMPLES / "email-classify.eml").read_text()}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    settings = gateway_settings(tmp_path, variants={OP: {CANDIDATE: VariantConfig(chain=("gemini/gemini-3.8-flash",))}})
    with running_gateway(settings) as running:
        yield running


def _admin(gateway: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.token('root', 'admin')}"}


def _shadow_budget(gateway: Gateway, usd: str) -> None:
    r = gateway.client.put("/v1/admin/budgets", headers=_admin(gateway),
                           json={"user_id": "*", "operation": "@shadow", "period": "day", "limit_usd": usd})
    assert r.status_code == 200, r.text


def _shadow(gateway: Gateway, until: int) -> dict[str, Any]:
    """The rollout's ``shadow`` object once ``until`` sampled calls are accounted for (shadow
    calls run after the answer: wait for them, at most 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        [rollout] = gateway.client.get("/v1/admin/rollouts", headers=_admin(gateway)).json()["rollouts"]
        shadow: dict[str, Any] = rollout["shadow"]
        if shadow["calls"] + shadow["refused_budget"] >= until or time.monotonic() > deadline:
            return shadow
        time.sleep(0.05)


def test_a_shadow_stage_over_http_reports_its_calls_and_a_spent_budget_stops_only_them(gateway: Gateway) -> None:
    r = gateway.client.post("/v1/admin/rollouts", headers=_admin(gateway),
                            json={"operations": [OP], "variant": CANDIDATE, "shadow_percent": 100})
    assert r.status_code == 201, r.text
    assert (r.json()["percentage"], r.json()["shadow_percent"], r.json()["stage_index"]) == (0, 100, 0)
    _shadow_budget(gateway, "1.00")
    before = gateway.stats()["gemini"]["requests"]

    for i in range(3):
        answer = gateway.post(OP, BODY, token=gateway.token(f"user-{i}"))
        assert answer.status_code == 200, answer.text
        assert "category" in answer.json()["output"]
    shadow = _shadow(gateway, 3)

    assert gateway.stats()["gemini"]["requests"] - before == 3  # the candidate answered each call
    assert (shadow["active"], shadow["calls"], shadow["errors"], shadow["refused_budget"]) == (True, 3, 0, 0)
    assert shadow["agreement_pct"] == round(100 * shadow["agreed"] / 3, 2)
    assert shadow["cost_ratio"] is not None and shadow["cost_ratio"] > 0

    _shadow_budget(gateway, "0")  # spent: shadowing stops, the users' calls go on
    answer = gateway.post(OP, BODY, token=gateway.token("user-9"))
    assert answer.status_code == 200, answer.text
    shadow = _shadow(gateway, 4)
    assert (shadow["calls"], shadow["refused_budget"]) == (3, 1)
    assert gateway.stats()["gemini"]["requests"] - before == 3


def test_a_shadow_share_out_of_range_is_refused(gateway: Gateway) -> None:
    for share in (0, 101):
        r = gateway.client.post("/v1/admin/rollouts", headers=_admin(gateway),
                                json={"operations": [OP], "variant": CANDIDATE, "shadow_percent": share})
        assert (r.status_code, r.json()["code"]) == (422, "invalid_input")
    r = gateway.client.post("/v1/admin/rollouts", headers=_admin(gateway),
                            json={"operations": [OP], "shadow_percent": 10})
    assert (r.status_code, r.json()["detail"]) == (422, "a shadow stage needs a variant rollout: name the variant to shadow")
    assert gateway.client.get("/v1/admin/rollouts", headers=_admin(gateway)).json()["rollouts"] == []
