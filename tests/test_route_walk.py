"""Every route of the OpenAPI document, walked over real HTTP with a bad body (issue 14 item 1).

Each route gets a body that cannot validate, carrying two canaries generated here: a password and
an Anthropic-shaped API key (string fields get a canary longer than their ``maxLength``, typed
fields an object of canaries; query parameters and integer path parameters get the key). Then:

- a protected route (one with a ``bearer`` requirement) without a token answers 401;
- with a token of a lower role than the requirement names, 403 (authorized before validated);
- with a token of the named role, a route with a body answers 422 problem+json naming fields;
- a public route with a body answers 422 problem+json, but the OAuth token endpoints, which answer
  400 ``{"error", "error_description"}`` (RFC 6749 §5.2; a canary ``grant_type`` is unsupported);
- no answer, whatever its status, carries a canary, and none is a 500.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from tests.gateways import Gateway

from opsgate.app import create_app
from opsgate.deps import BEARER, FORM

LOWER = {"user": None, "operator": "user", "admin": "operator"}
TOKEN_ROUTES = {"POST /v1/auth/token", "POST /v1/auth/refresh"}
"""Their refusals are RFC 6749 §5.2 errors, not problems (opsgate.security.oauth)."""
PATH_VALUES = {"operation": "task-prioritize", "user_id": "alice", "incident_id": "no-such-incident"}


@dataclass(frozen=True)
class Canaries:
    password: str
    api_key: str

    def within(self, response: httpx.Response) -> list[str]:
        text = response.text + "".join(f"{k}: {v}" for k, v in response.headers.items())
        return [c for c in (self.password, self.api_key) if c in text]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    role: str | None
    body_type: str | None
    schema: dict[str, Any]
    query: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@pytest.fixture
def canaries() -> Canaries:
    return Canaries(password="pw-" + secrets.token_urlsafe(18), api_key="sk-ant-api03-" + secrets.token_urlsafe(40))  # pragma: allowlist secret


@pytest.fixture
def walk(gateway: Gateway, canaries: Canaries) -> Iterator[tuple[Gateway, list[Route], Canaries]]:
    spec = gateway.client.get("/openapi.json").json()
    routes = [_route(method, path, op) for path, ops in spec["paths"].items() for method, op in ops.items()]
    yield gateway, routes, canaries


def test_the_walk_covers_every_protected_route_and_every_body(walk: tuple[Gateway, list[Route], Canaries]) -> None:
    _, routes, _ = walk
    protected = {str(r) for r in routes if r.role}
    with_body = {str(r) for r in routes if r.body_type}
    assert len(routes) >= 35 and len(protected) >= 27 and len(with_body) >= 19
    assert {"PUT /v1/admin/budgets", "PUT /v1/admin/users/{user_id}", "POST /v1/operations/email-compose",
            "POST /v1/incidents/{incident_id}/resolve", "PUT /v1/me/settings"} <= protected & with_body
    assert {"POST /v1/auth/token", "POST /v1/auth/session"} <= with_body - protected


def test_no_token_and_a_bad_body_is_a_401_that_echoes_nothing(walk: tuple[Gateway, list[Route], Canaries]) -> None:
    gateway, routes, canaries = walk
    seen = {str(r): _send(gateway.client, r, canaries, None) for r in routes if r.role}
    assert {name: r.status_code for name, r in seen.items()} == {name: 401 for name in seen}
    assert {name: r.headers["content-type"] for name, r in seen.items()} == {
        name: "application/problem+json" for name in seen}
    assert {name: canaries.within(r) for name, r in seen.items() if canaries.within(r)} == {}


def test_a_lower_role_and_a_bad_body_is_a_403(walk: tuple[Gateway, list[Route], Canaries]) -> None:
    gateway, routes, canaries = walk
    seen = {str(r): _send(gateway.client, r, canaries, gateway.token("walker", LOWER[r.role]))
            for r in routes if r.role and LOWER[r.role]}
    assert len(seen) >= 15  # every role-protected route but /metrics, which also takes the scrape token
    assert {name: (r.status_code, r.json()["code"]) for name, r in seen.items()} == {
        name: (403, "forbidden") for name in seen}
    assert {name: canaries.within(r) for name, r in seen.items() if canaries.within(r)} == {}


def test_the_needed_role_and_a_bad_body_is_a_422_naming_fields(walk: tuple[Gateway, list[Route], Canaries]) -> None:
    gateway, routes, canaries = walk
    seen = {str(r): (r, _send(gateway.client, r, canaries, gateway.token("walker", r.role) if r.role else None))
            for r in routes}
    bodies = {name: resp for name, (route, resp) in seen.items() if route.body_type and name not in TOKEN_ROUTES}
    assert {name: (r.status_code, r.headers["content-type"], r.json()["code"]) for name, r in bodies.items()} == {
        name: (422, "application/problem+json", "invalid_input") for name in bodies}
    assert {name: (r.status_code, r.headers["content-type"], r.json()["error"])
            for name, (_, r) in seen.items() if name in TOKEN_ROUTES} == {
        name: (400, "application/json", "unsupported_grant_type") for name in TOKEN_ROUTES}
    assert all(r.json()["errors"] and all(set(e) == {"loc", "msg"} and e["loc"] for e in r.json()["errors"])
               for r in bodies.values())
    assert {name: r.status_code for name, (_, r) in seen.items() if r.status_code >= 500} == {}
    assert {name: canaries.within(r) for name, (_, r) in seen.items() if canaries.within(r)} == {}


def test_path_and_query_validation_share_the_one_problem_handler(walk: tuple[Gateway, list[Route], Canaries]) -> None:
    gateway, _, canaries = walk
    admin = {"Authorization": f"Bearer {gateway.token('walker', 'admin')}"}
    advance = gateway.client.post(f"/v1/admin/rollouts/{canaries.api_key}/advance", headers=admin)
    health = gateway.client.get("/v1/health", params={"window": canaries.password}, headers=admin)
    assert [(r.status_code, r.headers["content-type"], r.json()["errors"][0]["loc"]) for r in (advance, health)] == [
        (422, "application/problem+json", "path.rollout_id"), (422, "application/problem+json", "query.window")]
    assert canaries.within(advance) + canaries.within(health) == []
    handler = create_app().exception_handlers[RequestValidationError]
    assert handler is not request_validation_exception_handler


def test_a_lone_surrogate_in_any_body_is_a_422_never_a_500(walk: tuple[Gateway, list[Route], Canaries]) -> None:
    """Every body field sent as the JSON escape of an unpaired surrogate (valid JSON syntax, not
    Unicode: a strict UTF-8 encode downstream would raise), or a form field as its UTF-8-shaped
    bytes ``%ED%A0%80``, is refused by the one body reader with 422 before anything acts on it."""
    gateway, routes, _ = walk
    seen = {}
    for route in (r for r in routes if r.body_type):
        headers = {"Authorization": f"Bearer {gateway.token('walker', route.role)}"} if route.role else {}
        path = route.path.replace("{rollout_id}", "1")
        for name, value in PATH_VALUES.items():
            path = path.replace("{" + name + "}", value)
        fields = list(route.schema.get("properties", {})) or ["x"]
        if route.body_type == FORM:
            content = "&".join(f"{name}=%ED%A0%80" for name in fields).encode()
        else:
            content = b"{" + b", ".join(b'"%s": "\\ud800"' % name.encode() for name in fields) + b"}"
        seen[str(route)] = gateway.client.request(route.method, path, content=content,
                                                  headers={**headers, "Content-Type": route.body_type})
    assert len(seen) >= 19
    assert {name: (r.status_code, r.json().get("code") or r.json()["error"]) for name, r in seen.items()} == {
        name: (400, "invalid_request") if name in TOKEN_ROUTES else (422, "invalid_input") for name in seen}


def _route(method: str, path: str, op: dict[str, Any]) -> Route:
    role = next((scopes[0] for req in op.get("security", []) for name, scopes in req.items() if name == BEARER),
                None)
    content = op.get("requestBody", {}).get("content", {})
    body_type = next(iter(content), None)
    schema = content[body_type]["schema"] if body_type else {}
    query = tuple(p["name"] for p in op.get("parameters", []) if p["in"] == "query")
    return Route(method.upper(), path, role, body_type, schema, query)


def _send(client: httpx.Client, route: Route, canaries: Canaries, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    path = route.path
    for name, value in PATH_VALUES.items():
        path = path.replace("{" + name + "}", value)
    path = path.replace("{rollout_id}", "1")
    params = {name: canaries.api_key for name in route.query}
    if route.body_type == FORM:
        form = {name: _long(canaries, prop) for name, prop in route.schema.get("properties", {}).items()}
        return client.request(route.method, path, data={**form, "grant_type": canaries.api_key},
                              params=params, headers=headers)
    objects = {"password": canaries.password, "api_key": canaries.api_key}
    body = {name: objects for name in route.schema.get("properties", {})}
    return client.request(route.method, path, json={**body, **objects}, params=params, headers=headers)


def _long(canaries: Canaries, prop: dict[str, Any]) -> str:
    """A canary longer than the property's maxLength (or the canary itself without one)."""
    value = canaries.password + canaries.api_key
    return value * (1 + prop.get("maxLength", 0) // len(value))
