"""The refusal fault parts (issue 14, item 5): ``policy:<provider>`` and ``context:<provider>:<tokens>``
answer each provider's own content-policy and context-length refusals, raw over HTTP."""

from __future__ import annotations

import httpx
import pytest

from opsgate.sandbox import FaultProfile, FaultProfileError, SandboxThread
from opsgate.sandbox.faults import FaultState, Outcome

LONG = "word " * 400  # 2,000 bytes: 500 tokens by the sandboxes' rule


def _post(sandbox: SandboxThread, provider: str, text: str) -> httpx.Response:
    base = sandbox.base_urls[provider]
    with httpx.Client(timeout=10) as client:
        if provider == "anthropic":
            return client.post(base + "/v1/messages", headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
                               json={"model": "claude-opus-5", "max_tokens": 50,
                                     "messages": [{"role": "user", "content": text}]})
        if provider == "deepseek":
            return client.post(base + "/chat/completions", headers={"Authorization": "Bearer k"},
                               json={"model": "deepseek-flash", "max_tokens": 50,
                                     "messages": [{"role": "user", "content": text}]})
        return client.post(base + "/v1beta/models/gemini-3.8-flash:generateContent", headers={"x-goog-api-key": "k"},
                           json={"contents": [{"role": "user", "parts": [{"text": text}]}]})


def test_parse_policy_and_context() -> None:
    profile = FaultProfile.parse("policy:deepseek, context:gemini:1000")
    assert profile.policy == frozenset({"deepseek"})
    assert profile.context == {"gemini": 1000}
    assert (profile.too_long("gemini", 1001), profile.too_long("gemini", 1000)) == (1000, None)
    assert profile.too_long("anthropic", 10**9) is None
    assert FaultState("policy:deepseek").decide("deepseek").outcome is Outcome.POLICY_REFUSED
    assert FaultState("policy:deepseek").decide("gemini").outcome is Outcome.OK


@pytest.mark.parametrize("text", ["policy:openai", "context:gemini", "context:gemini:0", "context:gemini:x"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(FaultProfileError):
        FaultProfile.parse(text)


def test_policy_refusals_in_each_providers_shape(sandbox: SandboxThread) -> None:
    sandbox.set_faults("policy:anthropic,policy:deepseek,policy:gemini")
    claude = _post(sandbox, "anthropic", "hi")
    assert claude.status_code == 400
    assert claude.json()["error"] == {"type": "invalid_request_error",
                                      "message": "Output blocked by content filtering policy"}
    deepseek = _post(sandbox, "deepseek", "hi")
    assert deepseek.status_code == 400
    assert deepseek.json()["error"] == {"message": "Content Exists Risk", "type": "invalid_request_error",
                                        "param": None, "code": "invalid_request_error"}
    gemini = _post(sandbox, "gemini", "hi")
    assert gemini.status_code == 200
    [candidate] = gemini.json()["candidates"]
    assert candidate["finishReason"] == "SAFETY" and "content" not in candidate


def test_context_windows_refuse_only_longer_prompts(sandbox: SandboxThread) -> None:
    sandbox.set_faults("context:anthropic:100,context:deepseek:100,context:gemini:100")
    assert [_post(sandbox, p, "hi").status_code for p in ("anthropic", "deepseek", "gemini")] == [200] * 3
    claude = _post(sandbox, "anthropic", LONG)
    assert claude.status_code == 400
    assert claude.json()["error"]["message"] == "prompt is too long: 500 tokens > 100 maximum"
    deepseek = _post(sandbox, "deepseek", LONG)
    assert deepseek.status_code == 400
    assert deepseek.json()["error"]["message"].startswith(
        "This model's maximum context length is 100 tokens. However, you requested 550 tokens "
        "(500 in the messages, 50 in the completion).")
    gemini = _post(sandbox, "gemini", LONG)
    assert gemini.status_code == 400
    assert gemini.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert gemini.json()["error"]["message"] == (
        "The input token count (500) exceeds the maximum number of tokens allowed (100).")
