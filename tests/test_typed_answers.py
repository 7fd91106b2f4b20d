"""Typed provider answers end to end (issue 14, item 5): real HTTP into the gateway, the provider
sandboxes answering in each wire format's own shape.

- A content-policy refusal is 422 ``content_filtered`` on every wire format, never retried on the
  same target and not passed down the chain.
- A context-length refusal falls back to the next target; when no target can take the prompt the
  client gets 413 ``input_too_large``.
- Every failed provider call leaves one sanitized log line (status, provider, model, error kind,
  provider request id), never the provider's body.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from tests.gateways import Gateway, gateway_settings, running_gateway
from tests.paths import EXAMPLES

from opsgate.operations.io import input_from_file
from opsgate.sandbox import SandboxThread
from opsgate.store.models import ai_operation_log

TARGETS = {
    "anthropic": "anthropic/claude-opus-5",
    "openai-compatible": "deepseek/deepseek-flash",
    "gemini": "gemini/gemini-3.8-flash",
}
SANDBOX = {"anthropic": "anthropic", "openai-compatible": "deepseek", "gemini": "gemini"}


def _gateway(tmp_path: Path, chain: list[str], faults: str, **overrides: object) -> Iterator[Gateway]:
    settings = gateway_settings(tmp_path, sandbox_faults=faults,
                                routes={"email-classify": {"chain": chain}}, **overrides)
    with running_gateway(settings) as running:
        yield running


def _classify(gw: Gateway) -> httpx.Response:
    body = input_from_file("email-classify", next(EXAMPLES.glob("email-classify.*")), None)
    return gw.post("email-classify", body)


def _rows(gw: Gateway) -> list[dict]:
    with gw.runtime.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(ai_operation_log)).mappings()]


def _problem(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert (body["status"], body["code"]) == (status, code)
    return body


def _provider_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "opsgate.routing"]


@pytest.mark.parametrize(
    ("wire", "faults", "status"),
    [
        ("anthropic", "policy:anthropic", "400"),        # 400 "Output blocked by content filtering policy"
        ("anthropic", "safety-blocked", "200"),          # stop_reason "refusal"
        ("openai-compatible", "policy:deepseek", "400"),  # 400 "Content Exists Risk"
        ("openai-compatible", "safety-blocked", "200"),  # finish_reason "content_filter"
        ("gemini", "policy:gemini", "200"),              # candidate finishReason SAFETY, no content
        ("gemini", "safety-blocked", "200"),             # promptFeedback.blockReason SAFETY
    ],
)
def test_content_policy_refusals_are_422_content_filtered_without_retry_or_fallback(
    tmp_path, caplog, wire, faults, status
) -> None:
    others = [t for w, t in TARGETS.items() if w != wire]
    caplog.set_level(logging.WARNING, logger="opsgate.routing")
    for gw in _gateway(tmp_path, [TARGETS[wire], *others], faults):
        body = _problem(_classify(gw), 422, "content_filtered")
        assert "Content Exists Risk" not in body["detail"] and "Output blocked" not in body["detail"]
        stats = gw.stats()
        assert stats[SANDBOX[wire]]["statuses"] == {status: 1}  # asked once, never retried
        assert sum(stats[p]["requests"] for p in stats if p != SANDBOX[wire]) == 0  # no fallback
        [row] = _rows(gw)
        assert (row["status"], row["error_code"], row["attempts"]) == ("error", "content_filtered", 1)
    provider, model = TARGETS[wire].split("/")
    [line] = _provider_log(caplog)
    assert line.startswith(f"provider error: provider={provider} model={model} status={status} "
                           "error=content_filtered request_id=")
    # the provider's request id when it gave one (DeepSeek's error bodies and headers carry none)
    assert line.endswith("request_id=none") == (faults == "policy:deepseek")
    assert "Content Exists Risk" not in line and "Output blocked" not in line


@pytest.mark.parametrize("wire", sorted(TARGETS))
def test_a_context_length_refusal_falls_back_to_the_next_target(tmp_path, caplog, wire) -> None:
    fallback = next(t for w, t in TARGETS.items() if w != wire)
    caplog.set_level(logging.WARNING, logger="opsgate.routing")
    for gw in _gateway(tmp_path, [TARGETS[wire], fallback], f"context:{SANDBOX[wire]}:50"):
        resp = _classify(gw)
        assert resp.status_code == 200, resp.text
        assert f"{resp.json()['provider']}/{resp.json()['model']}" == fallback
        assert gw.stats()[SANDBOX[wire]]["statuses"] == {"400": 1}  # not retried on the same target
        [row] = _rows(gw)
        assert (row["status"], row["attempts"]) == ("ok", 2)
    provider, model = TARGETS[wire].split("/")
    [line] = _provider_log(caplog)
    assert line.startswith(f"provider error: provider={provider} model={model} status=400 error=context_length")
    assert "maximum" not in line and "token count" not in line


def test_no_target_can_take_the_prompt_is_413_input_too_large(tmp_path) -> None:
    faults = "context:anthropic:50,context:deepseek:50,context:gemini:50"
    for gw in _gateway(tmp_path, list(TARGETS.values()), faults):
        body = _problem(_classify(gw), 413, "input_too_large")
        assert body["detail"] == "The prompt does not fit the context window of any model of this operation"
        stats = gw.stats()
        assert {p: s["statuses"] for p, s in stats.items()} == {p: {"400": 1} for p in SANDBOX.values()}
        [row] = _rows(gw)
        assert (row["status"], row["error_code"], row["attempts"]) == ("error", "input_too_large", 3)


def test_a_context_refusal_then_an_outage_is_503_not_413(tmp_path) -> None:
    """One target could still take the prompt later, so the client is told to retry, not to shrink it."""
    chain = [TARGETS["anthropic"], TARGETS["openai-compatible"]]
    for gw in _gateway(tmp_path, chain, "context:anthropic:50,outage:deepseek"):
        _problem(_classify(gw), 503, "provider_unavailable")
        assert gw.stats()["anthropic"]["statuses"] == {"400": 1}


def test_a_configured_context_window_skips_the_endpoint_before_sending(tmp_path, monkeypatch) -> None:
    """``[providers.local] context_window`` (vLLM's --max-model-len) is read at start-up: a prompt
    whose bound plus max_tokens exceeds it skips the endpoint without a request."""
    monkeypatch.setenv("LOCAL_KEY", "sk-" + secrets.token_hex(16))
    with SandboxThread() as local:
        config = {
            "providers": {"local": {"kind": "openai-compatible", "base_url": local.base_urls["deepseek"],
                                    "api_key_env": "LOCAL_KEY",  # pragma: allowlist secret
                                    "json_mode": "json_object", "context_window": 1000}},
            "prices": {"local/qwen3-8b": {"input": "0", "output": "0"}},
        }
        for gw in _gateway(tmp_path, ["local/qwen3-8b", TARGETS["anthropic"]], "none", **config):
            resp = _classify(gw)
            assert resp.status_code == 200, resp.text
            assert resp.json()["provider"] == "anthropic"
            [row] = _rows(gw)
            assert (row["provider"], row["attempts"]) == ("anthropic", 2)  # the skip is an attempt
        assert local.stats()["providers"]["deepseek"]["requests"] == 0


# --------------------------------------------------------------------- Retry-After beyond patience

RATE_LIMITED_WAIT = {"anthropic": "retry-after: 1", "openai-compatible": "Retry-After: 1",
                     "gemini": "RetryInfo retryDelay 2s"}


@pytest.mark.parametrize("wire", sorted(TARGETS))
def test_a_retry_after_beyond_the_routes_patience_cools_the_provider_down(tmp_path, wire) -> None:
    """The sandboxes' 429s ask for 1 s (Anthropic retry-after, DeepSeek Retry-After) or 2 s
    (Gemini RetryInfo); the route waits at most 0.5 s, so the call falls back at once and the
    next calls skip the provider until the time it asked for has passed."""
    fallback = next(t for w, t in TARGETS.items() if w != wire)
    sandbox = SANDBOX[wire]
    for gw in _gateway(tmp_path, [TARGETS[wire], fallback], f"ratelimit:{sandbox}", max_retry_wait_s=0.5):
        first = _classify(gw)
        assert first.status_code == 200 and f"{first.json()['provider']}/{first.json()['model']}" == fallback
        assert gw.stats()[sandbox]["statuses"] == {"429": 1}  # not retried: the wait is beyond patience
        second = _classify(gw)
        assert second.status_code == 200 and second.json()["provider"] == fallback.split("/")[0]
        assert gw.stats()[sandbox]["requests"] == 1  # skipped while cooling down
        breaker = gw.runtime.router.breaker(sandbox, TARGETS[wire].split("/", 1)[1]).snapshot()  # the model's
        assert breaker.state == "open" and 0 < breaker.open_for_s <= 2.0
        gw.sandbox.set_faults("none")
        import time

        time.sleep(breaker.open_for_s + 0.05)  # the provider's own wait, then the half-open trial
        third = _classify(gw)
        assert third.status_code == 200 and f"{third.json()['provider']}/{third.json()['model']}" == TARGETS[wire]
        assert [r["attempts"] for r in _rows(gw)] == [2, 2, 1]  # the skip is an attempt


# --------------------------------------------------------------------- what goes into the prompt

def _raw(from_header: str, attachment_name: str = "statement.pdf") -> str:
    return (
        f"From: {from_header}\r\nTo: support@example.org\r\nSubject: Refund\r\n"
        "Date: Tue, 03 Mar 2026 09:12:44 +0100\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlease refund the duplicate charge.\r\n"
        f'--b1\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="{attachment_name}"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n"
    )


def test_a_600000_character_from_header_is_clipped_in_the_prompt(tmp_path) -> None:
    huge = '"' + "Maria " * 100_000 + '" <maria.lopez@example.com>'  # 600,000-character display name
    for gw in _gateway(tmp_path, [TARGETS["anthropic"]], "none"):
        resp = gw.post("email-classify", {"raw": _raw(huge)})
        assert resp.status_code == 200, resp.text
        assert resp.json()["output"]["email"]["trim_notes"] == ["header values cut to 255 characters: From"]
        [row] = _rows(gw)
        # the sandbox bills ceil(bytes / 4) tokens: the whole From alone would be 150,000
        assert row["input_tokens"] < 2_000


def test_an_attachment_name_over_255_characters_is_a_422_naming_the_field(tmp_path) -> None:
    name = "statement-" + "x" * 300 + ".pdf"
    for gw in _gateway(tmp_path, [TARGETS["anthropic"]], "none"):
        resp = gw.post("email-classify", {"raw": _raw("maria.lopez@example.com", name)})
        body = _problem(resp, 422, "invalid_input")
        assert body["errors"] == [{"loc": "raw", "msg": "filename: String should have at most 255 characters"}]
        assert "x" * 50 not in resp.text  # the submitted value is not echoed
        assert gw.stats()["anthropic"]["requests"] == 0 and _rows(gw) == []
