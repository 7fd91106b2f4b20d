"""Variant rollouts over real HTTP against ``opsgate serve --sandbox``: the candidate variant serves
the users whose bucket (in the variant's own group id) is within the stage percentage, sticky;
every intent names the variant; a rollback puts every user back on the live variant at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.gateways import Gateway, gateway_settings, running_gateway
from tests.paths import EXAMPLES

from opsgate.config import VariantConfig
from opsgate.ledger.entry import decode_body

from opsgate.rollout.bucketing import bucket
from opsgate.rollout.service import variant_group
from opsgate.operations import get_operation
from opsgate.security.auth import Principal
from opsgate.store.models import ledger_entries

OP = "email-classify"
CANDIDATE = "flash-v2"
BODY = {"raw": (EXAMPLES / "email-classify.eml").read_text()}
IDS = [f"user-{i:05d}" for i in range(20_000)]
GROUP = variant_group(OP, CANDIDATE)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    prompts = tmp_path / "prompts" / OP
    prompts.mkdir(parents=True)
    (prompts / "v2.txt").write_text("Sort this mail for its reader into one of:\n${labels}\n")
    settings = gateway_settings(tmp_path, prompts_dir=tmp_path / "prompts", variants={
        OP: {CANDIDATE: VariantConfig(chain=("gemini/gemini-3.8-flash",), prompt="v2")}})
    with running_gateway(settings) as running:
        yield running


def _admin(gateway: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.token('root', 'admin')}"}


def _intents(gateway: Gateway) -> dict[str, dict[str, Any]]:
    with gateway.runtime.engine.connect() as conn:
        bodies = [decode_body(bytes(b)) for (b,) in conn.execute(select(ledger_entries.c.body))]
    return {b["request_id"]: b for b in bodies if b["kind"] == "intent"}


def _served(gateway: Gateway) -> list[str]:
    """The variant the running gateway's step 2 picks for each of the 20,000 ids."""
    op = get_operation(OP)
    return [gateway.runtime.gateway.choose_variant(Principal(u, ("user",)), op).name for u in IDS]


def _call(gateway: Gateway, user_id: str) -> str:
    """One real call; the variant its ledger intent names."""
    r = gateway.post(OP, BODY, token=gateway.token(user_id))
    assert r.status_code == 200, r.text
    return str(_intents(gateway)[r.headers["X-Request-ID"]]["variant"])


def test_variant_rollout_splits_by_bucket_sticky_and_every_intent_names_the_variant(gateway: Gateway) -> None:
    r = gateway.client.post("/v1/admin/rollouts", headers=_admin(gateway),
                            json={"operations": [OP], "variant": CANDIDATE})
    assert r.status_code == 201, r.text
    rollout = r.json()
    assert (rollout["variant"], rollout["percentage"], rollout["state"]) == (CANDIDATE, 5, "running")

    served = _served(gateway)
    share = served.count(CANDIDATE) / len(IDS) * 100
    assert 4.0 <= share <= 6.0, share
    assert served == [CANDIDATE if bucket(GROUP, u) <= 5 else "default" for u in IDS]
    # independent of the toggle's group id: the toggle canary's 5 % are not the variant's 5 %
    toggle_five = {u for u in IDS if bucket(OP, u) <= 5}
    assert len(toggle_five & {u for u, v in zip(IDS, served) if v == CANDIDATE}) < 0.1 * len(toggle_five)

    inside = [u for u, v in zip(IDS, served) if v == CANDIDATE][:4]
    outside = [u for u, v in zip(IDS, served) if v == "default"][:4]
    before = gateway.stats()["gemini"]["requests"]
    for u in inside + outside + inside:  # twice for the candidate's users: sticky
        assert _call(gateway, u) == (CANDIDATE if u in inside else "default")
    assert gateway.stats()["gemini"]["requests"] - before == 8  # the candidate's route
    intent = next(i for i in _intents(gateway).values() if i["variant"] == CANDIDATE)
    v2 = gateway.runtime.gateway.variants.get(OP, CANDIDATE).prompt
    assert (intent["prompt"], intent["policy"]) == ({"version": "v2", "sha256": v2.sha256},
                                                     ["gemini/gemini-3.8-flash"])

    advanced = gateway.client.post(f"/v1/admin/rollouts/{rollout['id']}/advance", headers=_admin(gateway))
    assert advanced.json()["stage_index"] == 1
    served_25 = _served(gateway)
    assert 24.0 <= served_25.count(CANDIDATE) / len(IDS) * 100 <= 26.0
    assert all(b == CANDIDATE for a, b in zip(served, served_25) if a == CANDIDATE)  # 5 % within 25 %
    assert all(_call(gateway, u) == CANDIDATE for u in inside)


def test_variant_rollback_flips_every_user_back_within_one_evaluation(gateway: Gateway) -> None:
    rollout = gateway.client.post("/v1/admin/rollouts", headers=_admin(gateway),
                                  json={"operations": [OP], "variant": CANDIDATE}).json()
    gateway.client.post(f"/v1/admin/rollouts/{rollout['id']}/advance", headers=_admin(gateway))
    served = _served(gateway)
    assert served.count(CANDIDATE) > 4_000
    inside = next(u for u, v in zip(IDS, served) if v == CANDIDATE)
    assert _call(gateway, inside) == CANDIDATE

    decision = gateway.runtime.rollout.evaluate(rollout["id"], open_p1=1)  # one evaluation
    assert decision is not None and decision.action.value == "rollback"
    assert set(_served(gateway)) == {"default"}
    assert _call(gateway, inside) == "default"
    toggle = gateway.client.get(f"/v1/admin/toggles/{OP}", headers=_admin(gateway)).json()
    assert toggle["enabled"] is True  # the operation stays on: only the variant went back
    [banner] = gateway.client.get("/v1/banners", headers={"Authorization": f"Bearer {gateway.token()}"}).json()["banners"]
    assert banner["operations"] == [OP] and "previous version" in banner["message"]


def test_a_variant_rollout_refuses_an_unknown_variant_and_more_than_one_operation(gateway: Gateway) -> None:
    r = gateway.client.post("/v1/admin/rollouts", headers=_admin(gateway),
                            json={"operations": [OP], "variant": "nope"})
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    assert r.json()["detail"] == f"{OP} has no variant 'nope'; its variants: default, {CANDIDATE}"
    r = gateway.client.post("/v1/admin/rollouts", headers=_admin(gateway),
                            json={"operations": [OP, "task-breakdown"], "variant": CANDIDATE})
    assert (r.status_code, r.json()["code"]) == (422, "invalid_input")
    r = gateway.client.post("/v1/admin/rollouts", headers=_admin(gateway),
                            json={"operations": [OP], "variant": "default"})
    assert (r.status_code, r.json()["detail"]) == (409, f"default is already the live variant of {OP}")
    assert gateway.client.get("/v1/admin/rollouts", headers=_admin(gateway)).json()["rollouts"] == []



def _scrape(gateway: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    r = gateway.client.get("/metrics", headers={"Authorization": f"Bearer {gateway.token('ops', 'operator')}"})
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def _ok_calls(scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float], variant: str) -> float:
    """``opsgate_requests_total`` of OP's successful calls labelled ``variant``, any provider."""
    return sum(v for (name, labels), v in scraped.items() if name == "opsgate_requests_total"
               and {("operation", OP), ("status", "ok"), ("variant", variant)} <= set(labels))


def test_prometheus_tells_the_candidate_from_the_live_variant(gateway: Gateway) -> None:
    """tester-ops F9: candidate calls were exported as variant="stable" and the only rollout gauge
    read the toggle's 100 %."""
    before = _scrape(gateway)
    r = gateway.client.post("/v1/admin/rollouts", headers=_admin(gateway), json={"operations": [OP], "variant": CANDIDATE})
    assert r.status_code == 201, r.text
    served = _served(gateway)
    inside = [u for u, v in zip(IDS, served) if v == CANDIDATE][:3]
    outside = [u for u, v in zip(IDS, served) if v == "default"][:2]
    for u in inside + outside:
        _call(gateway, u)
    after = _scrape(gateway)
    assert _ok_calls(after, "candidate") - _ok_calls(before, "candidate") == 3
    assert _ok_calls(after, "stable") - _ok_calls(before, "stable") == 2
    assert after[("opsgate_rollout_candidate_percentage", (("operation", OP),))] == 5
    assert after[("opsgate_rollout_candidate_percentage", (("operation", "email-compose"),))] == 0
    assert after[("opsgate_rollout_percentage", (("operation", OP),))] == 100  # the toggle's share
