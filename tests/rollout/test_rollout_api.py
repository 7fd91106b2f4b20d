"""The rollout API over real HTTP against ``opsgate serve --sandbox`` (tests/conftest.py ``gateway``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
from tests.ledgered import entries

from opsgate.operations.io import input_from_file
from opsgate.rollout.bucketing import bucket

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
Gateway = Any  # tests/conftest.py's running-gateway fixture object

OP = "task-prioritize"


def body() -> dict:
    return orjson.loads(orjson.dumps(input_from_file(OP, min(EXAMPLES.glob(f"{OP}.*")), None)))


def admin(gateway: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.token('root', 'admin')}"}


def user(gateway: Gateway, user_id: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.token(user_id)}"}


def test_rollout_api_sandbox_enables_everything_and_says_so(gateway: Gateway) -> None:
    toggles = gateway.client.get("/v1/admin/toggles", headers=admin(gateway)).json()["toggles"]
    assert len(toggles) == 9
    assert {(t["enabled"], t["rollout_percentage"], t["opt_in_required"], t["updated_by"]) for t in toggles} == {
        (True, 100, False, "sandbox")}
    assert gateway.post(OP, body()).status_code == 200


def test_rollout_api_disabled_operation_is_a_403_problem(gateway: Gateway) -> None:
    r = gateway.client.put(f"/v1/admin/toggles/{OP}", headers=admin(gateway),
                           json={"enabled": False, "reason": "incident 7"})
    assert r.status_code == 200 and r.json()["enabled"] is False and r.json()["updated_by"] == "root"
    refused = gateway.post(OP, body())
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["code"] == "operation_disabled"
    assert problem["detail"] == f"{OP} is not enabled"


def test_rollout_api_admin_routes_need_the_admin_role(gateway: Gateway) -> None:
    assert gateway.client.get("/v1/admin/toggles", headers=user(gateway)).json()["code"] == "forbidden"
    assert gateway.client.put(f"/v1/admin/toggles/{OP}", headers=user(gateway),
                              json={"enabled": False}).status_code == 403
    assert gateway.client.post("/v1/admin/rollouts", json={"operations": [OP]}).status_code == 401
    operator = {"Authorization": f"Bearer {gateway.token('olga', 'operator')}"}
    r = gateway.client.post("/v1/admin/rollouts/1/rollback", headers=operator, json={"reason": "p1"})
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")  # docs/security.md: rollbacks are admin's
    assert gateway.post(OP, body()).status_code == 200


def test_rollout_api_rejects_bad_bodies(gateway: Gateway) -> None:
    r = gateway.client.put(f"/v1/admin/toggles/{OP}", headers=admin(gateway), json={"rollout_percentage": 150})
    assert (r.status_code, r.json()["code"], r.json()["errors"][0]["loc"]) == (422, "invalid_input",
                                                                              "rollout_percentage")
    r = gateway.client.put(f"/v1/admin/toggles/{OP}", headers=admin(gateway), json={"enabled": "yes"})
    assert r.status_code == 422
    r = gateway.client.put("/v1/admin/toggles/no-such-op", headers=admin(gateway), json={"enabled": True})
    assert r.status_code == 404
    r = gateway.client.post("/v1/admin/rollouts", headers=admin(gateway),
                            json={"operations": [OP], "plan": {"stages": [{"percentage": 50, "hours": 1},
                                                                          {"percentage": 10, "hours": 1}]}})
    assert (r.status_code, r.json()["detail"]) == (422, "stage percentages must increase strictly")
    r = gateway.client.post("/v1/admin/rollouts", headers=admin(gateway),
                            json={"operations": [OP], "plan": {"stages": [{"percentage": 5, "seconds": 1e300}]}})
    assert (r.status_code, r.json()["code"], r.json()["detail"]) == (
        422, "invalid_input", "stages[0].seconds must be an integer number of seconds")
    r = gateway.client.post("/v1/admin/rollouts", headers=admin(gateway),
                            json={"operations": [OP], "plan": {"stages": [{"percentage": 5, "seconds": 60}],
                                                               "observation_s": 9007199254740991}})
    assert (r.status_code, r.json()["detail"]) == (422, "observation_s must be at most 366 days (31622400 seconds)")


def test_rollout_api_opt_in_is_per_user(gateway: Gateway) -> None:
    gateway.client.put(f"/v1/admin/toggles/{OP}", headers=admin(gateway), json={"opt_in_required": True})
    refused = gateway.post(OP, body(), token=gateway.token("carol"))
    assert (refused.status_code, refused.json()["code"]) == (403, "operation_disabled")
    assert "opt-in" in refused.json()["detail"]
    r = gateway.client.put("/v1/me/settings", headers=user(gateway, "carol"), json={"opt_in": {OP: True}})
    assert r.status_code == 200
    settings = r.json()
    assert settings["user_id"] == "carol" and settings["opt_in"][OP] is True
    assert settings["operations"][OP] == {"available": True, "reason": "enabled",
                                          "detail": f"{OP} is enabled for your account"}
    assert gateway.post(OP, body(), token=gateway.token("carol")).status_code == 200
    dave = gateway.client.get("/v1/me/settings", headers=user(gateway, "dave")).json()
    assert (dave["user_id"], dave["opt_in"][OP], dave["operations"][OP]["reason"]) == ("dave", False,
                                                                                       "opt_in_required")
    adoption = {t["operation"]: t["adoption"] for t in
                gateway.client.get("/v1/admin/toggles", headers=admin(gateway)).json()["toggles"]}
    assert adoption[OP]["opted_in"] == 0  # carol and dave are token-only, not registered users


def test_rollout_api_canary_then_rollback_shows_a_banner(gateway: Gateway) -> None:
    r = gateway.client.post("/v1/admin/rollouts", headers=admin(gateway), json={"operations": [OP]})
    assert r.status_code == 201
    rollout = r.json()
    assert (rollout["state"], rollout["percentage"], rollout["operations"]) == ("running", 5, [OP])
    inside = next(f"u{i}" for i in range(500) if bucket(OP, f"u{i}") <= 5)
    outside = next(f"u{i}" for i in range(500) if bucket(OP, f"u{i}") > 5)
    assert gateway.post(OP, body(), token=gateway.token(inside)).status_code == 200
    refused = gateway.post(OP, body(), token=gateway.token(outside))
    assert refused.json()["detail"].endswith("not yet available to your account")
    advanced = gateway.client.post(f"/v1/admin/rollouts/{rollout['id']}/advance", headers=admin(gateway)).json()
    assert (advanced["action"], advanced["stage_index"]) == ("promote", 1)
    assert gateway.client.get("/v1/banners", headers=user(gateway)).json() == {"banners": []}
    blank = gateway.client.post(f"/v1/admin/rollouts/{rollout['id']}/rollback", headers=admin(gateway),
                                json={"reason": "  "})
    assert (blank.status_code, blank.json()["code"]) == (422, "invalid_input")  # the ledger must say why
    rb = gateway.client.post(f"/v1/admin/rollouts/{rollout['id']}/rollback", headers=admin(gateway),
                             json={"reason": "users report wrong priorities"})
    assert (rb.status_code, rb.json()["state"]) == (200, "rolling_back")
    [banner] = gateway.client.get("/v1/banners", headers=user(gateway)).json()["banners"]
    assert banner["operations"] == [OP] and banner["level"] == "warning"
    assert gateway.post(OP, body(), token=gateway.token(inside)).status_code == 403
    again = gateway.client.post(f"/v1/admin/rollouts/{rollout['id']}/advance", headers=admin(gateway))
    assert (again.status_code, again.json()["code"]) == (409, "rollout_conflict")
    [listed] = gateway.client.get("/v1/admin/rollouts", headers=admin(gateway)).json()["rollouts"]
    assert [h["action"] for h in listed["history"]] == ["start", "promote", "rollback"]
    assert listed["history"][-1]["reason"] == "users report wrong priorities"
    assert json.dumps(listed)  # plain JSON all the way down


def test_rollout_api_toggle_put_during_a_canary_is_a_409_naming_the_rollout(gateway: Gateway) -> None:
    """Tester A F3: the PUT used to answer 200 and serve 100 % while the rollout said 5 %."""
    rollout = gateway.client.post("/v1/admin/rollouts", headers=admin(gateway), json={"operations": [OP]}).json()
    r = gateway.client.put(f"/v1/admin/toggles/{OP}", headers=admin(gateway), json={"rollout_percentage": 100})
    assert (r.status_code, r.headers["content-type"], r.json()["code"]) == (
        409, "application/problem+json", "rollout_conflict")
    assert f"rollout {rollout['id']} (running)" in r.json()["detail"]
    assert f"/v1/admin/rollouts/{rollout['id']}/rollback" in r.json()["detail"]
    toggle = gateway.client.get(f"/v1/admin/toggles/{OP}", headers=admin(gateway)).json()
    assert (toggle["rollout_percentage"], toggle["updated_by"]) == (5, f"rollout:{rollout['id']}")
    killed = gateway.client.put(f"/v1/admin/toggles/{OP}", headers=admin(gateway), json={"kill_switch": True})
    assert (killed.status_code, killed.json()["kill_switch"]) == (200, True)
    [listed] = gateway.client.get("/v1/admin/rollouts", headers=admin(gateway)).json()["rollouts"]
    assert listed["state"] == "rolling_back"


def test_rollout_api_a_toggle_put_that_changes_nothing_writes_no_ledger_entry(gateway: Gateway) -> None:
    """Tester A: ``PUT {}`` (or the values the toggle already has) wrote a ``toggle.set`` entry
    with before == after, noise in the audit trail. It now answers 200 with the toggle as it is."""
    before = gateway.client.get(f"/v1/admin/toggles/{OP}", headers=admin(gateway)).json()
    written = len(entries(gateway.runtime.engine, "toggle.set"))
    for same in ({}, {"enabled": True, "rollout_percentage": 100, "reason": "again"}):
        r = gateway.client.put(f"/v1/admin/toggles/{OP}", headers=admin(gateway), json=same)
        assert (r.status_code, r.json()) == (200, before)
    assert len(entries(gateway.runtime.engine, "toggle.set")) == written
    changed = gateway.client.put(f"/v1/admin/toggles/{OP}", headers=admin(gateway), json={"rollout_percentage": 50})
    assert changed.json()["rollout_percentage"] == 50
    assert len(entries(gateway.runtime.engine, "toggle.set")) == written + 1
