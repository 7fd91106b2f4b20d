"""opsgate.app.ClientDisconnect: the router's Cancel for one HTTP request reads the ASGI
``http.disconnect`` message (tester-wire F3), and only when asked."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select
from starlette.requests import Request
from tests.budgets import ADMIN
from tests.gateways import gateway_settings, running_gateway
from tests.paths import EXAMPLES

from opsgate.app import ClientDisconnect
from opsgate.clock import SystemClock
from opsgate.config import RouteConfig
from opsgate.metering.budgets import set_budget
from opsgate.metering.models import ANY, ai_operation_attempts, budget_counters, budget_reservations
from opsgate.providers.registry import ANTHROPIC_DEFAULT_MODEL, DEEPSEEK_DEFAULT_MODEL
from opsgate.store.models import ai_operation_log, ledger_entries

OP = "email-classify"
BODY = {"raw": (EXAMPLES / "email-classify.eml").read_text()}

SCOPE: dict[str, Any] = {"type": "http", "method": "POST", "path": "/v1/operations/email-classify",
                         "headers": [], "query_string": b""}


class Receive:
    """An ASGI ``receive`` after the body was read: ``http.disconnect`` once ``leave()`` was
    called, until then it waits. Counts the calls."""

    def __init__(self) -> None:
        self.left = asyncio.Event()
        self.calls = 0

    def leave(self) -> None:
        self.left.set()

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        await self.left.wait()
        return {"type": "http.disconnect"}


async def test_a_connected_client_is_not_gone_and_nothing_is_read_until_asked() -> None:
    receive = Receive()
    cancel = ClientDisconnect(Request(SCOPE, receive))
    assert receive.calls == 0  # made per call: reads nothing by itself
    assert await cancel.gone() is False
    assert receive.calls == 1


async def test_a_disconnected_client_is_gone_and_stays_gone() -> None:
    receive = Receive()
    receive.leave()
    cancel = ClientDisconnect(Request(SCOPE, receive))
    assert await cancel.gone() is True
    assert await cancel.gone() is True
    assert receive.calls == 1


async def test_wait_gone_returns_when_the_client_disconnects() -> None:
    receive = Receive()
    cancel = ClientDisconnect(Request(SCOPE, receive))
    waiting = asyncio.ensure_future(cancel.wait_gone())
    await asyncio.sleep(0)
    assert not waiting.done()
    receive.leave()
    await waiting
    assert await cancel.gone() is True


def test_a_client_that_hangs_up_during_a_hanging_request_gets_no_fallback_sent(tmp_path: Path) -> None:
    """The repro's shape over a real server (uvicorn, sandboxes): the primary hangs until the
    attempt's 2 s timeout; the client gives up after 0.5 s. Before, the timed-out attempt fell
    back to deepseek (its request sent, charged, for an answer nobody received); now the call
    ends ``client_closed`` with only the timed-out request charged and nothing left reserved."""
    chain = ("anthropic/" + ANTHROPIC_DEFAULT_MODEL, "deepseek/" + DEEPSEEK_DEFAULT_MODEL)
    settings = gateway_settings(tmp_path, sandbox_faults="timeout-once:anthropic",
                                routes={OP: RouteConfig(chain=chain, timeout_s=2.0)})  # type: ignore[arg-type]
    with running_gateway(settings) as gateway:
        runtime = gateway.runtime
        set_budget(runtime.ledger, SystemClock(), actor=ADMIN, user_id=ANY, operation=ANY, period="day",
                   limit_micro_usd=10**9)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{gateway.base_url}/v1/operations/{OP}", json=BODY, timeout=0.5,
                       headers={"Authorization": f"Bearer {gateway.token()}"})
        result = _wait_for_result(runtime.engine)
        with runtime.engine.connect() as conn:
            attempts = conn.execute(select(ai_operation_attempts.c.provider, ai_operation_attempts.c.outcome,
                                           ai_operation_attempts.c.billing)).all()
            logged = conn.execute(select(ai_operation_log.c.error_code)).scalar_one()
            reserved = conn.execute(select(budget_counters.c.reserved_micro_usd)).scalar_one()
            state = conn.execute(select(budget_reservations.c.state)).scalar_one()
        stats = gateway.stats()
    assert (result["status"], result["error_code"]) == ("error", "client_closed")
    assert logged == "client_closed"
    assert [tuple(a) for a in attempts] == [("anthropic", "timeout", "estimated")]
    assert (stats["anthropic"]["requests"], stats["deepseek"]["requests"]) == (1, 0)
    assert (result["provider"], result["cost_micro_usd"] > 0) == ("anthropic", True)
    assert (reserved, state) == (0, "unknown_usage")  # settled, at the timed-out request's worst case


def _wait_for_result(engine: Engine) -> dict[str, Any]:
    """The first ``result`` ledger entry, once the server has written it (polled, at most 30 s)."""
    for _ in range(300):
        with engine.connect() as conn:
            bodies = [json.loads(b) for b in conn.execute(select(ledger_entries.c.body)).scalars()]
        found = [b for b in bodies if b["kind"] == "result"]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError("no result entry was written")
