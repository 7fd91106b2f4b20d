"""Operator input over real HTTP (``opsgate serve --sandbox``, tests/conftest.py ``gateway``): free
text is stored and ledgered redacted, control characters and secret-shaped identifiers are 422 with
nothing written (:mod:`opsgate.security.operator_input`)."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from sqlalchemy import func, select
from tests.rollout.rollout_helpers import ledger_kinds
from tests.security.canaries import slack_hook

from opsgate.store.models import ledger_entries

Gateway = Any  # tests/conftest.py's running-gateway fixture object
OP = "task-prioritize"
KEY = "sk-ant-api03-" + secrets.token_urlsafe(70)
"""A key in Anthropic's shape of this module's own: the canaries' KEYS are held by the process's
sanitizer once a gateway configured with them ran (tests/security/test_secret_canary.py), and a
held value is redacted as ``secret``, not by its shape."""


def admin(gateway: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.token('root', 'admin')}"}


def start(gateway: Gateway) -> int:
    r = gateway.client.post("/v1/admin/rollouts", headers=admin(gateway), json={"operations": [OP]})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def ledger_count(gateway: Gateway) -> int:
    with gateway.runtime.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(ledger_entries)).scalar_one())


def test_a_key_in_a_rollback_reason_is_answered_stored_and_ledgered_redacted(gateway: Gateway) -> None:
    rid = start(gateway)
    rb = gateway.client.post(f"/v1/admin/rollouts/{rid}/rollback", headers=admin(gateway),
                             json={"reason": f"bad key {KEY}"})
    assert rb.status_code == 200, rb.text
    assert rb.json()["reason"].startswith("bad key [REDACTED:anthropic:")
    assert KEY not in rb.text
    listed = gateway.client.get("/v1/admin/rollouts", headers=admin(gateway))
    [rollout] = listed.json()["rollouts"]
    assert rollout["reason"] == rollout["history"][-1]["reason"] == rb.json()["reason"]
    assert KEY not in listed.text
    decisions = [p for k, p in ledger_kinds(gateway.runtime.engine) if k == "rollout.decision"]
    assert decisions[-1]["reason"] == rb.json()["reason"]
    assert not [e for e in ledger_kinds(gateway.runtime.engine) if KEY in json.dumps(e)]


def test_addresses_and_credentials_of_every_shape_in_a_rollback_reason_are_stored_redacted(
    gateway: Gateway,
) -> None:
    """Testers F2 and F4: the reason reaches the ledger, the rollout history and the incident
    summary through the one sanitizer; none of these values may (the ledger is append-only)."""
    hook, password = slack_hook(), slack_hook()[-12:]
    values = ["jörg@müller.example", '"john doe"@corp.example', "用户@例子.广告", "admin@[192.168.1.1]",
              "anna.berg%40corp.example", password, hook]
    rid = start(gateway)
    reason = (f"{values[0]}, {values[1]}, {values[2]}, {values[3]} and /invite?email={values[4]} "
              f"broke redis://:{password}@cache; see https://hooks.slack.com/services/{hook}")
    rb = gateway.client.post(f"/v1/admin/rollouts/{rid}/rollback", headers=admin(gateway),
                             json={"reason": reason})
    assert rb.status_code == 200, rb.text
    assert re.findall(r"\[REDACTED:([a-z_]+):", rb.json()["reason"]) == ["email"] * 5 + ["url_cred", "webhook"]
    listed = gateway.client.get("/v1/admin/rollouts", headers=admin(gateway)).json()
    seen = json.dumps([rb.json(), listed, ledger_kinds(gateway.runtime.engine)], ensure_ascii=False)
    assert [v for v in values if v in seen] == []


def test_a_nul_in_a_rollback_reason_is_a_422_and_nothing_is_written(gateway: Gateway) -> None:
    rid = start(gateway)
    entries = ledger_count(gateway)
    rb = gateway.client.post(f"/v1/admin/rollouts/{rid}/rollback", headers=admin(gateway),
                             json={"reason": "bad\x00key"})
    assert (rb.status_code, rb.json()["code"]) == (422, "invalid_input")
    assert rb.json()["errors"] == [{"loc": "reason", "msg": "must not contain a NUL character (U+0000)"}]  # tester-wire F9: refused with the body
    [rollout] = gateway.client.get("/v1/admin/rollouts", headers=admin(gateway)).json()["rollouts"]
    assert (rollout["state"], [h["action"] for h in rollout["history"]]) == ("running", ["start"])
    assert ledger_count(gateway) == entries


def test_a_secret_shaped_blank_or_control_budget_user_id_is_a_422_and_nothing_is_written(gateway: Gateway) -> None:
    entries = ledger_count(gateway)
    for user_id, why in [(KEY, "must not look like a secret"), ("  ", "must not be blank"),
                         ("al\x00ice", "must not contain a NUL character"),  # tester-wire F9: refused with the body
                         ("al\x01ice", "must not contain control characters"),
                         ("ghost  ", "must not start or end with whitespace"),  # tester A: was accepted
                         (" ghost", "must not start or end with whitespace")]:
        put = gateway.client.put("/v1/admin/budgets", headers=admin(gateway),
                                 json={"user_id": user_id, "period": "day", "limit_usd": "1.00"})
        assert (put.status_code, put.json()["code"]) == (422, "invalid_input"), put.text
        assert put.json()["detail"].startswith(f"user_id {why}")
        assert KEY not in put.text
    listed = gateway.client.get("/v1/admin/budgets", headers=admin(gateway))
    assert listed.json()["budgets"] == []
    assert ledger_count(gateway) == entries
    ok = gateway.client.put("/v1/admin/budgets", headers=admin(gateway),
                            json={"user_id": "alice", "period": "day", "limit_usd": "1.00"})
    assert (ok.status_code, ok.json()["user_id"], ok.json()["scope"]) == (200, "alice", "user:alice")


def test_a_user_id_shaped_like_personal_data_can_have_a_budget(gateway: Gateway) -> None:
    """``opsgate users add`` takes any id: an e-mail address or a long numeric IdP ``sub`` (a
    phone- or card-shaped run of digits to the sanitizer) names a user a budget must reach."""
    for user_id in ["alice@example.com", "4155552671", "4111111111111111", "108234567890123456789"]:
        ok = gateway.client.put("/v1/admin/budgets", headers=admin(gateway),
                                json={"user_id": user_id, "period": "day", "limit_usd": "1.00"})
        assert (ok.status_code, ok.json()["user_id"]) == (200, user_id), ok.text
