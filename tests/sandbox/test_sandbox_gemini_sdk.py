"""The Gemini sandbox, driven by the official ``google-genai`` SDK (retries off)."""

from __future__ import annotations

import json
import secrets

import httpx
import jsonschema
import pytest
from google import genai
from google.genai import errors, types
from pydantic import BaseModel, Field

from opsgate.sandbox import SandboxThread
from opsgate.sandbox.synth import count_tokens

MODEL = "gemini-3.8-flash"  # issue 13: Google answers gemini-2.5-flash with another model since 2026-12-01


class Anomaly(BaseModel):
    metric: str
    severity: int = Field(ge=1, le=3)
    points: list[float] = Field(min_length=2)
    note: str | None = None


@pytest.fixture
def client(sandbox: SandboxThread, gemini_key: str) -> genai.Client:
    options = types.HttpOptions(
        base_url=sandbox.base_urls["gemini"],
        api_version="v1beta",
        retry_options=types.HttpRetryOptions(attempts=1),
    )
    return genai.Client(api_key=gemini_key, http_options=options)


def _config(**kwargs: object) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(**kwargs)  # type: ignore[arg-type]


def test_text_answer_parses_with_usage(client: genai.Client) -> None:
    reply = client.models.generate_content(
        model=MODEL, contents="Find anomalies", config=_config(system_instruction="Be exact.")
    )
    candidate = reply.candidates[0]
    assert candidate.finish_reason == types.FinishReason.STOP
    assert candidate.content.role == "model"
    assert "Find anomalies" in reply.text
    usage = reply.usage_metadata
    assert usage.prompt_token_count == count_tokens("Be exact.\nFind anomalies")
    assert usage.candidates_token_count == count_tokens(reply.text)
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    assert usage.thoughts_token_count is None and usage.cached_content_token_count is None
    assert reply.model_version == MODEL and reply.response_id


def test_response_schema_from_pydantic_model(client: genai.Client) -> None:
    reply = client.models.generate_content(
        model=MODEL,
        contents="Analyse",
        config=_config(response_mime_type="application/json", response_schema=Anomaly),
    )
    jsonschema.validate(json.loads(reply.text), Anomaly.model_json_schema())
    assert isinstance(reply.parsed, Anomaly)


def test_response_schema_openapi_upper_case(client: genai.Client) -> None:
    schema = {
        "type": "OBJECT",
        "required": ["labels"],
        "properties": {
            "labels": {
                "type": "ARRAY",
                "minItems": 2,
                "items": {"type": "STRING", "enum": ["work", "home"]},
            }
        },
    }
    reply = client.models.generate_content(
        model=MODEL,
        contents="Label",
        config=_config(response_mime_type="application/json", response_schema=schema),
    )
    assert json.loads(reply.text) == {"labels": ["work", "work"]}


def test_response_json_schema(client: genai.Client) -> None:
    schema = Anomaly.model_json_schema()
    reply = client.models.generate_content(
        model=MODEL,
        contents="Analyse",
        config=_config(response_mime_type="application/json", response_json_schema=schema),
    )
    jsonschema.validate(json.loads(reply.text), schema)


def test_thinking_reports_thoughts(client: genai.Client) -> None:
    reply = client.models.generate_content(
        model=MODEL,
        contents="Think",
        config=_config(
            thinking_config=types.ThinkingConfig(thinking_budget=512, include_thoughts=True)
        ),
    )
    usage = reply.usage_metadata
    parts = reply.candidates[0].content.parts
    assert parts[0].thought is True
    assert usage.thoughts_token_count == count_tokens(parts[0].text)
    assert usage.total_token_count == (
        usage.prompt_token_count + usage.candidates_token_count + usage.thoughts_token_count
    )


def test_implicit_cache_on_repeat(client: genai.Client) -> None:
    system = "Context " + secrets.token_hex(8) + " " + "w" * 6000
    config = _config(system_instruction=system)
    first = client.models.generate_content(model=MODEL, contents="a", config=config)
    second = client.models.generate_content(model=MODEL, contents="a", config=config)
    assert first.usage_metadata.cached_content_token_count is None
    assert second.usage_metadata.cached_content_token_count == count_tokens(system)
    assert second.usage_metadata.prompt_token_count == count_tokens(system + "\na")


def test_max_output_tokens(client: genai.Client) -> None:
    reply = client.models.generate_content(
        model=MODEL, contents="x", config=_config(max_output_tokens=4)
    )
    assert reply.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert reply.usage_metadata.candidates_token_count == 4


def test_streaming_sse(client: genai.Client) -> None:
    chunks = list(client.models.generate_content_stream(model=MODEL, contents="stream me please"))
    text = "".join(c.text or "" for c in chunks)
    assert len(chunks) > 1
    assert "stream me please" in text
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[-1].usage_metadata.candidates_token_count == count_tokens(text)


def test_streaming_json_array_without_alt(sandbox: SandboxThread, gemini_key: str) -> None:
    url = sandbox.base_urls["gemini"] + f"/v1beta/models/{MODEL}:streamGenerateContent"
    reply = httpx.post(
        url,
        headers={"x-goog-api-key": gemini_key},
        json={"contents": [{"parts": [{"text": "hi"}]}]},
    )
    chunks = reply.json()
    assert isinstance(chunks, list) and chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_key_in_query_and_missing_key(sandbox: SandboxThread, gemini_key: str) -> None:
    url = sandbox.base_urls["gemini"] + f"/v1beta/models/{MODEL}:generateContent"
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    assert httpx.post(url, params={"key": gemini_key}, json=body).status_code == 200
    missing = httpx.post(url, json=body)
    assert missing.status_code == 403
    assert missing.json()["error"]["status"] == "PERMISSION_DENIED"


def test_invalid_argument(client: genai.Client, sandbox: SandboxThread, gemini_key: str) -> None:
    url = sandbox.base_urls["gemini"] + f"/v1beta/models/{MODEL}:generateContent"
    reply = httpx.post(url, headers={"x-goog-api-key": gemini_key}, json={"contents": []})
    assert reply.status_code == 400
    assert reply.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_rate_limit_has_retry_info_and_no_header(
    sandbox: SandboxThread, client: genai.Client
) -> None:
    sandbox.set_faults("ratelimit:gemini")
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model=MODEL, contents="x")
    error = caught.value
    assert error.code == 429 and error.status == "RESOURCE_EXHAUSTED"
    assert "Please retry in 2.0s." in error.message
    retry = [
        d for d in error.details["error"]["details"] if d["@type"].endswith("google.rpc.RetryInfo")
    ]
    assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}]
    assert "retry-after" not in {k.lower() for k in error.response.headers}


@pytest.mark.parametrize(
    ("profile", "code", "status"),
    [("outage:gemini", 503, "UNAVAILABLE"), ("status:gemini:500", 500, "INTERNAL")],
)
def test_server_errors(
    sandbox: SandboxThread, client: genai.Client, profile: str, code: int, status: str
) -> None:
    sandbox.set_faults(profile)
    with pytest.raises(errors.ServerError) as caught:
        client.models.generate_content(model=MODEL, contents="x")
    assert caught.value.code == code and caught.value.status == status


def test_safety_blocked_prompt(sandbox: SandboxThread, client: genai.Client) -> None:
    sandbox.set_faults("safety-blocked")
    reply = client.models.generate_content(model=MODEL, contents="x")
    assert reply.candidates is None
    assert reply.prompt_feedback.block_reason == types.BlockedReason.SAFETY
    assert reply.text is None


def test_count_tokens_agrees_with_the_prompt_token_count(client: genai.Client) -> None:
    counted = client.models.count_tokens(model=MODEL, contents="Find anomalies in 3, 4, 99")
    reply = client.models.generate_content(model=MODEL, contents="Find anomalies in 3, 4, 99")
    assert counted.total_tokens == reply.usage_metadata.prompt_token_count
    assert counted.total_tokens == count_tokens("Find anomalies in 3, 4, 99")


def test_count_tokens_of_a_whole_generate_content_request(sandbox: SandboxThread, gemini_key: str) -> None:
    """The REST form the gateway sends (the SDK sends only ``contents`` to the Gemini API)."""
    request = {
        "systemInstruction": {"parts": [{"text": "Be exact."}]},
        "contents": [{"role": "user", "parts": [{"text": "Find anomalies"}]}],
        "generationConfig": {"maxOutputTokens": 100, "responseMimeType": "application/json",
                             "responseSchema": {"type": "OBJECT", "properties": {"m": {"type": "STRING"}}}},
    }
    base = sandbox.base_urls["gemini"] + f"/v1beta/models/{MODEL}"
    headers = {"x-goog-api-key": gemini_key}
    counted = httpx.post(base + ":countTokens", headers=headers,
                         json={"generateContentRequest": {"model": f"models/{MODEL}", **request}})
    answer = httpx.post(base + ":generateContent", headers=headers, json=request)
    assert counted.status_code == 200
    assert counted.json()["totalTokens"] == answer.json()["usageMetadata"]["promptTokenCount"]
    assert counted.json()["totalTokens"] == count_tokens("Be exact.\nFind anomalies")
    both = httpx.post(base + ":countTokens", headers=headers,
                      json={"contents": request["contents"], "generateContentRequest": request})
    assert both.status_code == 400 and both.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_count_fault_fails_only_the_count(sandbox: SandboxThread, client: genai.Client) -> None:
    sandbox.set_faults("count:gemini:503")
    with pytest.raises(errors.ServerError) as caught:
        client.models.count_tokens(model=MODEL, contents="hi")
    assert caught.value.code == 503 and caught.value.status == "UNAVAILABLE"
    assert client.models.generate_content(model=MODEL, contents="hi").text
    assert sandbox.stats()["counts"]["gemini"] == 1
    assert sandbox.stats()["providers"]["gemini"]["requests"] == 1
