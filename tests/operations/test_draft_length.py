"""A draft's requested length (email-respond, email-compose; issue 16 product decision), over real
HTTP: the limit reaches each wire format in the schema and the prompt, a longer answer gets the
schema-repair request, and an unknown length is a 422 that does not echo it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.operations.privacy_recorder import prompt_of, recorded_gateway
from tests.paths import EXAMPLES

from opsgate.operations import OPERATIONS
from opsgate.operations.email import DRAFT_LIMITS
from opsgate.operations.io import input_from_file

TARGETS = {
    "anthropic": "anthropic/claude-opus-5",
    "deepseek": "deepseek/deepseek-flash",
    "gemini": "gemini/gemini-3.8-flash",
}


def _body(op_id: str, **options: Any) -> dict[str, Any]:
    return input_from_file(op_id, next(EXAMPLES.glob(f"{op_id}.*")), options)


def _cap(op_id: str, body: dict[str, Any]) -> int:
    op = OPERATIONS[op_id]
    return op.prepare(op.Input.model_validate(body)).request.max_tokens


def _sent(wire: str, body: dict[str, Any]) -> tuple[dict[str, Any], int, str]:
    """The answer schema, ``max_tokens`` and system prompt of a request body in ``wire``'s format."""
    if wire == "anthropic":
        return body["tools"][0]["input_schema"], body["max_tokens"], body["system"]
    if wire == "deepseek":  # JSON mode json_object: the schema is in the system message
        system = next(m["content"] for m in body["messages"] if m["role"] == "system")
        assert body["response_format"] == {"type": "json_object"}
        shape = system.rsplit("```json\n", 1)[1].removesuffix("\n```")
        return json.loads(shape), body["max_tokens"], system
    config = body["generationConfig"]
    return config["responseSchema"], config["maxOutputTokens"], body["systemInstruction"]["parts"][0]["text"]


@pytest.mark.parametrize("wire", sorted(TARGETS))
@pytest.mark.parametrize(("op_id", "length"), [("email-compose", "short"), ("email-respond", "long")])
def test_the_provider_receives_the_lengths_limits(tmp_path: Path, wire: str, op_id: str, length: str) -> None:
    """Anthropic's tool input_schema and DeepSeek's schema (in its system message, JSON mode
    ``json_object``) carry the body's maxLength and the questions' maxItems; Gemini's responseSchema (which has no string length)
    carries maxItems and the limits in its description; every prompt states the target."""
    body = _body(op_id, length=length)
    limit = DRAFT_LIMITS[length]
    with recorded_gateway(tmp_path, routes={op_id: {"chain": [TARGETS[wire]]}}) as (gw, recorder):
        resp = gw.post(op_id, body)
        assert resp.status_code == 200, resp.text
    [sent] = recorder.received
    assert sent["path"].startswith(f"/{wire}/")
    schema, max_tokens, system = _sent(wire, sent["body"])
    questions = schema["properties"]["open_questions"]
    if wire == "gemini":
        assert int(questions["maxItems"]) == limit.questions
        assert f"body at most {limit.body_chars} characters" in schema["description"]
    else:
        assert (schema["properties"]["body"]["maxLength"], questions["maxItems"]) == (
            limit.body_chars, limit.questions)
    assert max_tokens == _cap(op_id, body)
    assert f"at most about {limit.words} words" in system
    assert f"open_questions (at most {limit.questions})" in system


def test_a_body_over_the_short_limit_gets_the_repair_request(tmp_path: Path) -> None:
    body = _body("email-compose", length="short")
    bodies = iter(["word " * 121, "Short enough."])  # 605 characters, then 13

    def answer(_: dict[str, Any]) -> dict[str, Any]:
        return {"language": "en", "subject": "Review", "body": next(bodies), "open_questions": []}

    with recorded_gateway(tmp_path, routes={"email-compose": {"chain": [TARGETS["anthropic"]]}}) as (gw, recorder):
        recorder.answer = answer
        resp = gw.post("email-compose", body)
        assert resp.status_code == 200, resp.text
    assert resp.json()["output"]["body"] == "Short enough."
    first, repair = (r["body"] for r in recorder.received)
    assert "Your previous answer did not match" not in prompt_of(first)
    assert "body: String should have at most 600 characters" in prompt_of(repair)
    assert repair["tools"][0]["input_schema"]["properties"]["body"]["maxLength"] == 600


@pytest.mark.parametrize("op_id", ["email-compose", "email-respond"])
def test_an_unknown_length_is_422_without_echo(gateway, op_id: str) -> None:
    secret = "sk-ant-api03-" + "Q" * 40  # pragma: allowlist secret
    for bad in (secret, "Medium", 250):
        resp = gateway.post(op_id, {**_body(op_id), "length": bad})
        assert resp.status_code == 422, resp.text
        problem = resp.json()
        assert problem["code"] == "invalid_input"
        assert problem["errors"] == [{"loc": "length", "msg": "Input should be 'short', 'medium' or 'long'"}]
        assert secret not in resp.text
    assert gateway.stats()["anthropic"]["requests"] == 0
