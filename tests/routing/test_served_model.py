"""The served model, per wire format, over HTTP (issue 13): substitutions are stored, priced at the
served model and alerted once per episode; retired models fall back without a retry and alert P2.

Each test routes ``email-classify`` to one target through ``opsgate.toml``-shaped settings and
lets the provider sandboxes answer the way the real APIs do: Anthropic and OpenAI-compatible
``model``, Gemini ``modelVersion``; Anthropic 404 ``not_found_error``, OpenAI 404
``model_not_found``, Gemini 404 ``NOT_FOUND``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from tests.gateways import Gateway, gateway_settings, running_gateway
from tests.paths import EXAMPLES

from opsgate.metering.cost import cost_micro_usd
from opsgate.metering.prices import PriceBook, PriceTable
from opsgate.monitoring.models import signals
from opsgate.providers.base import Usage
from opsgate.store.models import ai_operation_log, ledger_entries
from opsgate.web.queries import substitutions


def _gateway(tmp_path: Path, chain: list[str], faults: str = "none") -> Iterator[Gateway]:
    settings = gateway_settings(tmp_path, sandbox_faults=faults,
                                routes={"email-classify": {"chain": chain}})
    with running_gateway(settings) as running:
        yield running


def _classify(gw: Gateway) -> dict:
    from opsgate.operations.io import input_from_file

    body = input_from_file("email-classify", next(EXAMPLES.glob("email-classify.*")), None)
    resp = gw.post("email-classify", body)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _rows(gw: Gateway) -> list[dict]:
    with gw.runtime.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(ai_operation_log).order_by(ai_operation_log.c.id)).mappings()]


def _signals(gw: Gateway, kind: str) -> list[dict]:
    with gw.runtime.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(signals).where(signals.c.kind == kind)).mappings()]


def _results(gw: Gateway) -> list[dict]:
    with gw.runtime.engine.connect() as conn:
        bodies = [json.loads(b) for b in conn.execute(select(ledger_entries.c.body)).scalars()]
    return [b for b in bodies if b["kind"] == "result"]


def _expected_cost(row: dict, provider: str, model: str) -> int:
    usage = Usage(input_tokens=row["input_tokens"], output_tokens=row["output_tokens"],
                  cache_write_tokens=row["cache_write_tokens"], cache_read_tokens=row["cache_read_tokens"])
    at = row["created_at"]
    return cost_micro_usd(usage, PriceBook(PriceTable.load()).price_at(provider, model, at).price)


SUBSTITUTIONS = [
    # (wire format, requested target, sandbox fault profile, served model)
    ("anthropic", "anthropic/claude-opus-5", "substitute:anthropic:claude-opus-5-5", "claude-opus-5-5"),
    ("openai-compatible", "deepseek/deepseek-flash", "substitute:deepseek:deepseek-v4-pro", "deepseek-v4-pro"),
    ("gemini", "gemini/gemini-2.5-flash", "none", "gemini-3.5-flash"),  # Google's own reroute
]


@pytest.mark.parametrize(("wire", "target", "faults", "served"), SUBSTITUTIONS, ids=[s[0] for s in SUBSTITUTIONS])
def test_substitution_is_stored_priced_at_the_served_model_and_alerted_once_per_episode(
    tmp_path, wire, target, faults, served
):
    provider, requested = target.split("/")
    gw_iter = _gateway(tmp_path, [target], faults)
    gw = next(gw_iter)
    try:
        first, second = _classify(gw), _classify(gw)
        rows = _rows(gw)
        assert [(r["model"], r["served_model"]) for r in rows] == [(requested, served)] * 2
        for row, body in zip(rows, (first, second)):
            assert body["cost_micro_usd"] == row["cost_micro_usd"] == _expected_cost(row, provider, served)
            assert row["cost_micro_usd"] != _expected_cost(row, provider, requested)
        assert [r["served_model"] for r in _results(gw)] == [served, served]
        [shown] = substitutions(gw.runtime.engine, rows[0]["created_at"] - timedelta(minutes=1))
        assert (shown["operation"], shown["model"], shown["served_model"], shown["calls"]) == (
            "email-classify", requested, served, 2)  # the dashboard's Providers page
        [event] = _signals(gw, "model_substituted")
        assert (event["severity"], event["subject"]) == ("P3", f"email-classify {target}")
        assert event["detail"] == f"email-classify: asked {provider} for {requested}, served by {served}"
        if faults != "none":  # the episode ends when the requested model serves again
            gw.sandbox.set_faults("none")
            _classify(gw)
            gw.sandbox.set_faults(faults)
            _classify(gw)
            assert len(_signals(gw, "model_substituted")) == 2
    finally:
        next(gw_iter, None)


def test_a_dated_snapshot_of_the_requested_model_is_no_substitution(tmp_path):
    gw_iter = _gateway(tmp_path, ["anthropic/claude-opus-5"], "substitute:anthropic:claude-opus-5-20260724")
    gw = next(gw_iter)
    try:
        _classify(gw)
        [row] = _rows(gw)
        assert (row["model"], row["served_model"]) == ("claude-opus-5", "claude-opus-5-20260724")
        assert row["cost_micro_usd"] == _expected_cost(row, "anthropic", "claude-opus-5")
        assert _signals(gw, "model_substituted") == []
    finally:
        next(gw_iter, None)


def test_an_unpriced_served_model_is_charged_the_dearer_price_and_flagged(tmp_path):
    gw_iter = _gateway(tmp_path, ["deepseek/deepseek-flash", "anthropic/claude-opus-5"],
                       "substitute:deepseek:deepseek-v9-secret")
    gw = next(gw_iter)
    try:
        _classify(gw)
        [row] = _rows(gw)
        assert (row["model"], row["served_model"]) == ("deepseek-flash", "deepseek-v9-secret")
        # the dearer per token kind of deepseek-flash and the chain's dearest (Claude Opus 5)
        assert row["cost_micro_usd"] == _expected_cost(row, "anthropic", "claude-opus-5")
        [result] = _results(gw)
        assert result["price_flag"] == "served_model_unpriced"
    finally:
        next(gw_iter, None)


RETIRED = [
    # (wire format, retired target, fault profile, the provider's error type)
    ("anthropic", "anthropic/claude-opus-4-1", "none", "not_found_error"),
    ("openai-compatible", "deepseek/deepseek-flash", "retired:deepseek:deepseek-flash", "model_not_found"),
    ("gemini", "gemini/gemini-2.0-flash", "none", "NOT_FOUND"),
]


@pytest.mark.parametrize(("wire", "target", "faults", "error"), RETIRED, ids=[r[0] for r in RETIRED])
def test_retired_model_falls_back_without_retry_and_alerts_p2_once(tmp_path, wire, target, faults, error):
    provider, model = target.split("/")
    fallback = "gemini/gemini-3.8-flash" if provider != "gemini" else "deepseek/deepseek-flash"
    gw_iter = _gateway(tmp_path, [target, fallback], faults)
    gw = next(gw_iter)
    try:
        first, _ = _classify(gw), _classify(gw)
        assert first["provider"] == fallback.split("/")[0]
        stats = gw.stats()[provider]
        assert (stats["requests"], stats["statuses"]) == (2, {"404": 2})  # one attempt per call
        rows = _rows(gw)
        assert [r["attempts"] for r in rows] == [2, 2]
        [event] = _signals(gw, "model_unavailable")
        assert (event["severity"], event["subject"]) == ("P2", f"email-classify {target}")
        assert model in event["detail"]
        assert _error_type(gw.sandbox.base_urls[provider], provider, model) == error
    finally:
        next(gw_iter, None)


def _error_type(base: str, provider: str, model: str) -> str:
    """The error type the sandbox's 404 carries, read as each provider's error body documents it."""
    if provider == "anthropic":
        resp = httpx.post(f"{base}/v1/messages", headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
                          json={"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
        return resp.json()["error"]["type"] if resp.status_code == 404 else str(resp.status_code)
    if provider == "deepseek":
        resp = httpx.post(f"{base}/chat/completions", headers={"Authorization": "Bearer k"},
                          json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
        return resp.json()["error"]["code"] if resp.status_code == 404 else str(resp.status_code)
    resp = httpx.post(f"{base}/v1beta/models/{model}:generateContent", headers={"x-goog-api-key": "k"},
                      json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    return resp.json()["error"]["status"] if resp.status_code == 404 else str(resp.status_code)


LEAKED_KEY = "sk-ant-api03-" + "leak" * 10  # pragma: allowlist secret (a made-up key shape, lower case: the profile is)
NOT_MODEL_IDS = [
    # (what the provider reports, found in no row)
    (f"m {LEAKED_KEY} maria.lopez@example.com", LEAKED_KEY),  # tester B's F11: spaces, a key, an address
    (LEAKED_KEY, LEAKED_KEY),  # a model-id charset, but a key (the sanitizer would change it)
    ("maria.lopez@example.com", "maria.lopez@example.com"),
    ("m" * 5000, "m" * 129),  # longer than any model id and than the served_model columns
]


@pytest.mark.parametrize(("provider", "target"), [("anthropic", "anthropic/claude-opus-5"),
                                                  ("deepseek", "deepseek/deepseek-flash"),
                                                  ("gemini", "gemini/gemini-3.8-flash")])
@pytest.mark.parametrize(("reported", "needle"), NOT_MODEL_IDS, ids=["prose", "key", "email", "5000"])
def test_a_served_model_that_is_no_model_id_is_recorded_as_invalid_and_flagged(tmp_path, provider, target, reported, needle):
    """Tester B F11: the provider's ``model``/``modelVersion`` text was stored as given, 5,000
    characters and a key included, in the attempt and log rows, the immutable ledger and the
    signal. Now it is ``<invalid>``: a substitution, priced at the dearest price and flagged."""
    from opsgate.metering.models import ai_operation_attempts

    gw_iter = _gateway(tmp_path, [target, "anthropic/claude-opus-5"], f"substitute:{provider}:{reported}")
    gw = next(gw_iter)
    try:
        _classify(gw)
        [row] = _rows(gw)
        assert (row["model"], row["served_model"]) == (target.split("/")[1], "<invalid>")
        assert row["cost_micro_usd"] == _expected_cost(row, "anthropic", "claude-opus-5")
        [result] = _results(gw)
        assert (result["served_model"], result["price_flag"]) == ("<invalid>", "served_model_unpriced")
        with gw.runtime.engine.connect() as conn:
            assert conn.execute(select(ai_operation_attempts.c.served_model)).scalars().all() == ["<invalid>"]
        [event] = _signals(gw, "model_substituted")
        assert event["detail"].endswith("served by <invalid>")
        database = Path(gw.runtime.engine.url.database or "")
        stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
        assert stored and needle.encode() not in stored
    finally:
        next(gw_iter, None)
