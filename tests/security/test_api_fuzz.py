"""Schemathesis against the running gateway's OpenAPI document: no 5xx, no schema violations.

Generated requests (bodies, path parameters, headers) for every documented operation go over real
HTTP to the ``gateway`` fixture with an admin token; every response must be below 500 and conform
to the documented schema (status code, content type, body). The run is derandomized (Hypothesis
derives its examples from the test itself), so every run sends the same requests.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

EXAMPLES_PER_OPERATION = 10


def test_api_has_no_5xx_and_follows_its_schema(gateway):
    base_url = str(gateway.client.base_url).rstrip("/")
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    auth = {"Authorization": f"Bearer {gateway.token('fuzz', 'admin')}"}
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def run(case):  # type: ignore[no-untyped-def]
            case.headers = {**(case.headers or {}), **auth}
            response = case.call(base_url=base_url)
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

        run()
        checked.append(operation.label)
    assert any("/v1/auth/token" in label for label in checked) and len(checked) >= 10
