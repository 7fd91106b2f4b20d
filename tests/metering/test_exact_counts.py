"""Exact input counts when the byte bound does not fit a budget (issue 16, item 2), over HTTP
against the sandboxes: the gateway asks the first target's token-count endpoint only when the
prompt's byte bound would refuse, reserves the exact count (nothing added: it already holds
Anthropic's tool-use system prompt, as the call's usage does), and
keeps the byte bound (402) when the count fails or times out; DeepSeek has no count API."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select
from tests.budgets import ADMIN
from tests.gateways import Gateway, gateway_settings, running_gateway
from tests.operations.privacy_recorder import recorded_gateway
from tests.paths import EXAMPLES
from tests.security.canaries import CANARIES, compose

from opsgate.clock import SystemClock
from opsgate.metering.budgets import budget_statuses, set_budget, usd_to_micro
from opsgate.metering.models import ANY, budget_reservations
from opsgate.metering.prices import PriceBook
from opsgate.metering.worstcase import attempt_worst_case_micro_usd
from opsgate.monitoring.prometheus import REGISTRY
from opsgate.operations import get_operation
from opsgate.providers.base import CompletionRequest
from opsgate.providers.registry import DEFAULT_MODELS
from opsgate.rollout.variants import DEFAULT_VARIANT
from opsgate.store.models import ai_operation_log

OP = "email-classify"
BODY = {"raw": (EXAMPLES / "email-classify.eml").read_text()}


@dataclass(frozen=True)
class Learned:
    """One admitted call of ``BODY`` under a roomy budget: what its byte bound held and what its
    exact count holds (the sandbox's count equals the input tokens it reported)."""

    byte_worst: int
    exact_worst: int
    spent: int


@contextmanager
def _gateway(tmp_path: Path, first: str, **overrides: object) -> Iterator[Gateway]:
    chain = [f"{first}/{DEFAULT_MODELS[first]}", "deepseek/deepseek-flash"][: 1 if first == "deepseek" else 2]
    settings = gateway_settings(tmp_path, routes={OP: {"chain": chain}}, **overrides)
    with running_gateway(settings) as gateway:
        yield gateway


def _budget(gateway: Gateway, limit: int) -> None:
    set_budget(gateway.runtime.ledger, SystemClock(), actor=ADMIN, user_id="alice", operation=ANY, period="day",
               limit_micro_usd=limit)


def _held(gateway: Gateway, request_id: str) -> int:
    with gateway.runtime.engine.connect() as conn:
        return conn.execute(select(budget_reservations.c.worst_micro_usd)
                            .where(budget_reservations.c.request_id == request_id)).scalar_one()


def _learn(gateway: Gateway, first: str) -> Learned:
    _budget(gateway, usd_to_micro("100"))
    reply = gateway.post(OP, BODY)
    assert reply.status_code == 200, reply.text
    request_id = reply.json()["request_id"]
    with gateway.runtime.engine.connect() as conn:
        row = conn.execute(select(ai_operation_log.c.input_tokens, ai_operation_log.c.provider,
                                  ai_operation_log.c.model)
                           .where(ai_operation_log.c.request_id == request_id)).one()
    assert row.provider == first
    key = f"{row.provider}/{row.model}"
    prices = PriceBook.from_settings(gateway.settings, SystemClock().now)
    request = _sent(gateway)
    held = _held(gateway, request_id)
    assert held == attempt_worst_case_micro_usd(request, key, prices)  # the byte bound
    exact = attempt_worst_case_micro_usd(request, key, prices, row.input_tokens)
    return Learned(held, exact, reply.json()["cost_micro_usd"])


def _sent(gateway: Gateway) -> CompletionRequest:
    """The request the gateway sends for ``BODY`` (validated with the live prompt, minimised)."""
    pipeline = gateway.runtime.gateway
    op = get_operation(OP)
    prepared, _ = pipeline.validate(op, pipeline.variants.serving(OP, DEFAULT_VARIANT), orjson.dumps(BODY))
    return pipeline.minimise(op, prepared)[0].request


def _squeeze(gateway: Gateway, learned: Learned) -> int:
    """Leave room for the exact worst case but not for the byte bound; returns the limit."""
    assert learned.exact_worst < learned.byte_worst
    limit = learned.spent + (learned.exact_worst + learned.byte_worst) // 2
    _budget(gateway, limit)
    return limit


def _counts(gateway: Gateway, provider: str, outcome: str) -> float:
    model = DEFAULT_MODELS[provider]
    labels = {"provider": provider, "model": model, "outcome": outcome}
    return REGISTRY.get_sample_value("opsgate_token_counts_total", labels) or 0.0


@pytest.mark.parametrize("first", ["anthropic", "gemini"])
def test_the_exact_count_admits_calls_the_byte_bound_refuses(tmp_path: Path, first: str) -> None:
    with _gateway(tmp_path, first) as gateway:
        learned = _learn(gateway, first)
        assert gateway.sandbox.stats()["counts"][first] == 0  # the bound fitted: nothing asked
        limit = _squeeze(gateway, learned)
        before = _counts(gateway, first, "counted")

        replies = [gateway.post(OP, BODY)]
        while replies[-1].status_code == 200 and len(replies) < 50:
            replies.append(gateway.post(OP, BODY))

        *admitted, refused = replies
        assert admitted and refused.status_code == 402 and refused.json()["code"] == "budget_exceeded"
        assert {_held(gateway, r.json()["request_id"]) for r in admitted} == {learned.exact_worst}
        assert gateway.sandbox.stats()["counts"][first] == len(replies)  # each one counted once
        assert _counts(gateway, first, "counted") == before + len(replies)
        [status] = budget_statuses(gateway.runtime.engine, SystemClock().now())
        assert status.reserved_micro_usd == 0
        assert 0 <= limit - status.spent_micro_usd < learned.exact_worst


def test_no_count_request_while_the_byte_bound_fits(tmp_path: Path) -> None:
    with _gateway(tmp_path, "anthropic") as gateway:
        learned = _learn(gateway, "anthropic")
        _budget(gateway, learned.spent + learned.byte_worst)  # exactly one more byte bound

        assert gateway.post(OP, BODY).status_code == 200

        assert gateway.sandbox.stats()["counts"] == {"anthropic": 0, "deepseek": 0, "gemini": 0}
        assert gateway.sandbox.stats()["providers"]["anthropic"]["requests"] == 2


@pytest.mark.parametrize(("faults", "outcome"), [("count:anthropic:500", "server_error"),
                                                 ("count:anthropic:timeout", "timeout")])
def test_a_failed_count_keeps_the_byte_bound_and_refuses(tmp_path: Path, faults: str, outcome: str) -> None:
    with _gateway(tmp_path, "anthropic", token_count_timeout_s=0.5) as gateway:
        learned = _learn(gateway, "anthropic")
        _squeeze(gateway, learned)
        gateway.sandbox.set_faults(faults)
        before = _counts(gateway, "anthropic", outcome)

        refused = gateway.post(OP, BODY)

        assert refused.status_code == 402 and refused.json()["code"] == "budget_exceeded"
        assert gateway.sandbox.stats()["counts"]["anthropic"] == 1
        assert gateway.sandbox.stats()["providers"]["anthropic"]["requests"] == 1  # the first call only
        assert _counts(gateway, "anthropic", outcome) == before + 1
        [status] = budget_statuses(gateway.runtime.engine, SystemClock().now())
        assert (status.spent_micro_usd, status.reserved_micro_usd) == (learned.spent, 0)


def test_a_provider_without_a_count_api_is_not_asked(tmp_path: Path) -> None:
    with _gateway(tmp_path, "deepseek") as gateway:
        learned = _learn(gateway, "deepseek")
        _budget(gateway, learned.spent + learned.byte_worst - 1)

        refused = gateway.post(OP, BODY)

        assert refused.status_code == 402 and refused.json()["code"] == "budget_exceeded"
        assert gateway.sandbox.stats()["counts"] == {"anthropic": 0, "deepseek": 0, "gemini": 0}
        assert gateway.sandbox.stats()["providers"]["deepseek"]["requests"] == 1


def test_the_count_request_carries_the_minimised_request_really_sent(tmp_path: Path) -> None:
    body = compose()
    with recorded_gateway(tmp_path) as (gateway, recorder):
        _budget(gateway, 1)  # neither bound fits: counted, then refused
        refused = gateway.post("email-compose", body)
        _budget(gateway, usd_to_micro("100"))
        served = gateway.post("email-compose", body)

    assert refused.status_code == 402 and served.status_code == 200, served.text
    [counted, sent] = recorder.received
    assert counted["path"] == "/anthropic/v1/messages/count_tokens"
    assert sent["path"] == "/anthropic/v1/messages"
    assert counted["body"] == {k: v for k, v in sent["body"].items() if k not in ("max_tokens", "temperature")}
    assert set(counted["body"]) >= {"model", "system", "messages", "tools", "tool_choice"}
    assert not [c for c in CANARIES if c in recorder.texts()]


def _cheaper(gateway: Gateway, limit: int) -> None:
    set_budget(gateway.runtime.ledger, SystemClock(), actor=ADMIN, user_id="alice", operation=ANY, period="day",
               limit_micro_usd=limit, on_exhausted="cheaper")


def test_a_cheaper_budget_tries_the_exact_count_before_degrading(tmp_path: Path) -> None:
    with _gateway(tmp_path, "anthropic") as gateway:
        learned = _learn(gateway, "anthropic")
        _cheaper(gateway, _squeeze(gateway, learned))

        replies = [gateway.post(OP, BODY).json()]
        while not replies[-1]["degraded"] and len(replies) < 50:
            replies.append(gateway.post(OP, BODY).json())

        *claude, degraded = replies
        assert claude and {(r["degraded"], r["provider"]) for r in claude} == {(False, "anthropic")}
        assert (degraded["degraded"], degraded["provider"]) == (True, "deepseek")
        assert {_held(gateway, r["request_id"]) for r in claude} == {learned.exact_worst}
        assert gateway.sandbox.stats()["counts"]["anthropic"] == len(replies)
        [status] = budget_statuses(gateway.runtime.engine, SystemClock().now())
        # the byte bound's refusals that the exact counts overturned are not counted
        assert (status.degraded_today, status.refused_today) == (1, 0)
        assert status.reserved_micro_usd == 0 and status.spent_micro_usd <= status.budget.limit_micro_usd


def test_a_cheaper_budget_degrades_a_call_whose_count_failed(tmp_path: Path) -> None:
    with _gateway(tmp_path, "anthropic", token_count_timeout_s=0.5) as gateway:
        learned = _learn(gateway, "anthropic")
        _cheaper(gateway, _squeeze(gateway, learned))
        gateway.sandbox.set_faults("count:anthropic:500")

        reply = gateway.post(OP, BODY)

        assert reply.status_code == 200, reply.text
        assert (reply.json()["degraded"], reply.json()["provider"]) == (True, "deepseek")
        assert gateway.sandbox.stats()["providers"]["anthropic"]["requests"] == 1  # the first call only
        [status] = budget_statuses(gateway.runtime.engine, SystemClock().now())
        assert (status.degraded_today, status.refused_today) == (1, 0)
