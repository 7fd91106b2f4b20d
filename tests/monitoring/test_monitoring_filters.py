"""Filters of the monitoring API name known values: a misspelt one is refused, never answered
with an empty list or an idle operation's figures."""

from __future__ import annotations

from typing import Any

Gateway = Any  # tests/conftest.py's running-gateway fixture


def test_an_unknown_incident_state_or_operation_is_refused_not_empty(gateway: Gateway) -> None:
    operator = {"Authorization": f"Bearer {gateway.token('olga', 'operator')}"}
    state = gateway.client.get("/v1/incidents", params={"state": "opne"}, headers=operator)
    assert (state.status_code, state.json()["code"]) == (422, "invalid_input") and "opne" not in state.text
    assert gateway.client.get("/v1/incidents", params={"state": "open"}, headers=operator).json() == {"incidents": []}
    ignored = gateway.client.get("/v1/incidents", params={"limit": "abc", "since": "2026-13-45"}, headers=operator)
    assert (ignored.status_code, ignored.json()) == (200, {"incidents": []})  # not parameters of the route
    unknown = gateway.client.get("/v1/health", params={"operation": "email-composer"}, headers=operator)
    assert (unknown.status_code, unknown.json()["code"]) == (404, "not_found")
    assert "email-composer" not in unknown.json()["detail"]
    known = gateway.client.get("/v1/health", params={"operation": "email-compose"}, headers=operator)
    assert known.status_code == 200 and known.json()["operationCount"] == 0
