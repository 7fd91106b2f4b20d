"""SQL-injection and XSS payloads through every string input over real HTTP, with no effect.

Every string field of every operation's input schema (top level and inside list items, found in
the served OpenAPI document), the admin and user APIs (toggles, budgets, roles, settings, rollouts)
and the user id itself (a token's ``sub``) get each payload. Afterwards: no 5xx; no problem+json
echoes a payload; the database holds the same tables, every row count is what the accepted calls
explain, and the ledger verifies; the dashboard's HTML pages never contain a payload unescaped.
"""

from __future__ import annotations

import copy
import re
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy import func, inspect, select
from tests.paths import EXAMPLES

from opsgate.ledger.verify import verify
from opsgate.operations import OPERATIONS
from opsgate.operations.io import input_from_file
from opsgate.security.models import users
from opsgate.security.users import add_user, set_password
from opsgate.store.models import ai_operation_log

SQLI = [
    "' OR '1'='1", "'; DROP TABLE users; --", "\" OR \"\"=\"", "1; DELETE FROM ledger_entries",
    "admin'--", "') UNION SELECT password_hash, role FROM users --", "%' AND 1=0 UNION SELECT sqlite_version() --",
    "1' AND (SELECT COUNT(*) FROM sqlite_master) > 0 --",
]
XSS = [
    "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "\"><svg onload=alert(1)>",
    "javascript:alert(1)", "</textarea><script>alert(document.cookie)</script>", "<iframe srcdoc='<b>x'>",
    "{{7*7}}<b onmouseover=alert(1)>", "'-alert(1)-'",
]
CORPUS = SQLI + XSS
EXAMPLE_FILES = {p.stem: p for p in EXAMPLES.iterdir()}
PROBLEM = "application/problem+json"


def strings_in(doc: Any) -> list[str]:
    """Every string (keys and values) in a decoded JSON document."""
    if isinstance(doc, dict):
        return [s for k, v in doc.items() for s in [k, *strings_in(v)]]
    if isinstance(doc, list):
        return [s for v in doc for s in strings_in(v)]
    return [doc] if isinstance(doc, str) else []


def string_paths(schema: dict, spec: dict, body: Any) -> list[tuple[Any, ...]]:
    """Paths of the string fields of ``schema`` (``$ref`` and ``anyOf`` followed); list items
    are addressed as element 0 when ``body`` has such a list."""
    schema = resolve(schema, spec)
    variants = schema.get("anyOf", [schema])
    paths: list[tuple[Any, ...]] = []
    for variant in (resolve(v, spec) for v in variants):
        if variant.get("type") == "string":
            return [()]
        for name, sub in variant.get("properties", {}).items():
            value = body.get(name) if isinstance(body, dict) else None
            paths += [(name, *p) for p in string_paths(sub, spec, value)]
        if variant.get("type") == "array" and isinstance(body, list) and body:
            paths += [(0, *p) for p in string_paths(variant["items"], spec, body[0])]
    return list(dict.fromkeys(paths))


def resolve(schema: dict, spec: dict) -> dict:
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def with_value(body: Any, path: tuple[Any, ...], value: str) -> Any:
    out = copy.deepcopy(body)
    target = out
    for step in path[:-1]:
        target = target.setdefault(step, {}) if isinstance(target, dict) else target[step]
    target[path[-1]] = value
    return out


class Checker:
    """Sends requests, checks each answer, counts the ones that were accepted."""

    def __init__(self, client: httpx.Client) -> None:
        self.client, self.accepted, self.statuses = client, 0, set()
        self.echoes: list[tuple[str, str, str]] = []  # (method url, payload, problem detail)

    def send(self, method: str, url: str, payload: str, **kwargs: Any) -> httpx.Response:
        response = self.client.request(method, url, **kwargs)
        self.statuses.add(response.status_code)
        assert response.status_code < 500, (method, url, payload, response.text[:300])
        refused = response.status_code >= 400 and response.headers.get("content-type", "").startswith(
            (PROBLEM, "application/json"))  # a problem, or an RFC 6749 §5.2 token error
        if refused and any(payload in s for s in strings_in(response.json())):
            body = response.json()
            self.echoes.append((f"{method} {url}", payload, body.get("detail", body.get("error_description", ""))))
        self.accepted += response.is_success
        return response


def test_payloads_have_no_effect(gateway) -> None:  # type: ignore[no-untyped-def]
    runtime, client = gateway.runtime, gateway.client
    add_user(runtime.engine, runtime.clock, "ada", "admin")
    set_password(runtime.engine, "ada", "ada-" + "pw" * 8)
    add_user(runtime.engine, runtime.clock, "grace", "admin")  # signs in to the dashboard: ada's
    set_password(runtime.engine, "grace", "grace-" + "pw" * 8)  # failed sign-ins throttle her (429)
    tables_before = set(inspect(runtime.engine).get_table_names())
    spec = client.get("/openapi.json").json()
    admin = {"Authorization": f"Bearer {gateway.token('ada', 'admin')}"}
    user = {"Authorization": f"Bearer {gateway.token('alice', 'user')}"}
    check = Checker(client)

    operation_calls = 0
    for op_id in OPERATIONS:
        base = input_from_file(op_id, EXAMPLE_FILES[op_id], None)
        schema = spec["paths"][f"/v1/operations/{op_id}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        paths = string_paths(schema, spec, base)
        assert paths, op_id
        for path in paths:
            for payload in CORPUS:
                response = check.send("POST", f"/v1/operations/{op_id}", payload,
                                      json=with_value(base, path, payload), headers=user)
                operation_calls += response.is_success
    for payload in CORPUS:  # the user id itself, in a token's subject
        sub = {"Authorization": f"Bearer {gateway.token(payload, 'user')}"}
        body = input_from_file("task-prioritize", EXAMPLE_FILES["task-prioritize"], None)
        operation_calls += check.send("POST", "/v1/operations/task-prioritize", payload, json=body, headers=sub).is_success
        check.send("GET", "/v1/me/settings", payload, headers=sub)
        check.send("PUT", "/v1/me/settings", payload, json={"opt_in": {payload: True}}, headers=sub)

    budgets_before = client.get("/v1/admin/budgets", headers=admin).json()
    stored_ids = {"ada", "grace"}
    for payload in CORPUS:
        segment = quote(payload, safe="")
        check.send("PUT", f"/v1/admin/toggles/{segment}", payload, json={"enabled": True}, headers=admin)
        check.send("GET", f"/v1/admin/toggles/{segment}", payload, headers=admin)
        check.send("PUT", "/v1/admin/toggles/email-classify", payload, json={"group_id": payload, "reason": payload}, headers=admin)
        if check.send("PUT", f"/v1/admin/users/{segment}", payload, json={"role": "user"}, headers=admin).is_success:
            stored_ids.add(payload)  # a user id is opaque text: kept verbatim, never executed
        check.send("PUT", "/v1/admin/users/alice", payload, json={"role": payload}, headers=admin)
        for field in ("user_id", "operation", "period", "limit_usd"):
            body = {"user_id": "alice", "operation": "email-classify", "period": "day", "limit_usd": "1.00"} | {field: payload}
            check.send("PUT", "/v1/admin/budgets", payload, json=body, headers=admin)
        check.send("POST", "/v1/admin/rollouts", payload, json={"operations": [payload]}, headers=admin)
        check.send("POST", f"/v1/admin/rollouts/{segment}/rollback", payload, json={"reason": payload}, headers=admin)
        check.send("GET", f"/v1/incidents/{segment}", payload, headers=admin)
        check.send("GET", "/v1/incidents", payload, params={"state": payload}, headers=admin)
        check.send("GET", "/v1/health", payload, params={"operation": payload}, headers=admin)
        check.send("POST", "/v1/auth/token", payload, data={"grant_type": "password", "username": payload, "password": payload})
        check.send("POST", "/v1/auth/token", payload, data={"grant_type": "password", "username": "ada", "password": payload})

    assert check.statuses >= {200, 400, 404, 422, 429}
    assert operation_calls > 100
    budgets_after = client.get("/v1/admin/budgets", headers=admin).json()
    with runtime.engine.connect() as conn:
        user_ids = set(conn.execute(select(users.c.user_id)).scalars())
        logged = conn.execute(select(func.count()).select_from(ai_operation_log)).scalar_one()
    assert set(inspect(runtime.engine).get_table_names()) == tables_before
    assert logged == operation_calls  # one log row per accepted call, none for refused ones
    assert user_ids == stored_ids
    assert len(budgets_after) - len(budgets_before) <= 1  # at most alice's daily budget (set by every accepted PUT)
    assert verify(runtime.engine).ok
    assert_dashboard_escapes(client, payloads=XSS)
    echoing = sorted({re.sub(r"/[^/]*%[^/]*", "/{payload}", where) for where, _, _ in check.echoes})
    assert check.echoes == [], f"problem+json echoes the submitted value: {echoing}"


def assert_dashboard_escapes(client: httpx.Client, payloads: list[str]) -> None:
    login = client.post("/v1/auth/session", data={"username": "grace", "password": "grace-" + "pw" * 8})
    assert login.status_code == 200, login.text
    cookie = "; ".join(f"{name}={value}" for name, value in login.cookies.items())
    pages = ["", "/providers", "/costs", "/adoption", "/rollouts", "/incidents", "/ledger", "/metrics"]
    for page in pages:
        html = client.get(f"/dashboard{page}", headers={"Cookie": cookie})
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html"), page
        for payload in payloads:
            if "<" in payload or ">" in payload:
                assert payload not in html.text, (page, payload)
