"""The ``schema:<provider>:<pct>`` fault: a share of one provider's answers are the ``off-schema``
answer (well-formed, missing every required field of the requested schema), spread evenly and
repeatably."""

from __future__ import annotations

import json

import httpx
import pytest

from opsgate.sandbox import FaultProfile, FaultProfileError, SandboxThread
from opsgate.sandbox.faults import FaultState, Outcome

SCHEMA = {"type": "object", "properties": {"category": {"type": "string"}}, "required": ["category"],
          "additionalProperties": False}


def test_schema_misses_are_spread_evenly_per_provider() -> None:
    state = FaultState("schema:deepseek:8")
    deepseek = [state.decide("deepseek").outcome for _ in range(100)]
    assert deepseek.count(Outcome.OFF_SCHEMA) == 8 and deepseek.count(Outcome.OK) == 92
    assert [i for i, o in enumerate(deepseek) if o is Outcome.OFF_SCHEMA] == [12, 24, 37, 49, 62, 74, 87, 99]
    assert {state.decide("anthropic").outcome for _ in range(100)} == {Outcome.OK}
    assert FaultProfile.parse("schema:gemini:100").schema == {"gemini": 100}
    with pytest.raises(FaultProfileError, match="schema needs <provider>:<0..100>"):
        FaultProfile.parse("schema:gemini:150")


def _answer(sandbox: SandboxThread, provider: str) -> object:
    base = sandbox.base_urls[provider]
    if provider == "anthropic":
        body = {"model": "claude-opus-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"name": "answer", "input_schema": SCHEMA}],
                "tool_choice": {"type": "tool", "name": "answer"}}
        r = httpx.post(base + "/v1/messages", json=body, headers={"x-api-key": "k", "anthropic-version": "2023-06-01"})
        return r.json()["content"][0]["input"]
    if provider == "deepseek":
        body = {"model": "deepseek-flash", "messages": [{"role": "user", "content": "hi"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}}}
        r = httpx.post(base + "/chat/completions", json=body, headers={"Authorization": "Bearer k"})
        return json.loads(r.json()["choices"][0]["message"]["content"])
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {"responseMimeType": "application/json", "responseSchema": SCHEMA}}
    r = httpx.post(f"{base}/v1beta/models/gemini-3.8-flash:generateContent", json=body, headers={"x-goog-api-key": "k"})
    return json.loads(r.json()["candidates"][0]["content"]["parts"][0]["text"])


@pytest.mark.parametrize("provider", ["anthropic", "deepseek", "gemini"])
def test_a_schema_miss_is_a_well_formed_answer_without_the_required_fields(sandbox: SandboxThread,
                                                                            provider: str) -> None:
    sandbox.set_faults(f"schema:{provider}:100")
    assert _answer(sandbox, provider) == {}
    sandbox.set_faults("none")
    healthy = _answer(sandbox, provider)
    assert isinstance(healthy, dict) and set(healthy) == {"category"} and isinstance(healthy["category"], str)
