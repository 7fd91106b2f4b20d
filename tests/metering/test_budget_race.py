"""The $0-overspend race through the HTTP API against the provider sandboxes.

Budget: the global daily budget is sized at 2.5 x the worst case the gateway reserves for the
request (computed with the gateway's own :func:`call_worst_case_micro_usd`), so at most two calls
fit. (The issue's example is $0.010 against $0.004 per call; the ratio is what matters, and the
gateway's real worst case for this request is larger because it covers a repair request too.)

1. Slow profile (every provider answer takes seconds, so all 200 requests overlap): exactly two
   are admitted, every other one is a 402 ``budget_exceeded``, the ledger holds an intent only for
   the admitted ones, and spend never goes above the limit. SQLite: one process; PostgreSQL: two
   gateway processes on one database.
2. No slow profile, 16 calls in flight at a time (calls finish and release while others
   arrive): a sampler reads the counters
   all along; spent + reserved never exceeds the limit at any sample.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_procs import gateways
from sqlalchemy import Engine, select
from tests.stores import fresh_postgres

from opsgate.clock import SystemClock
from opsgate.config import Settings
from opsgate.metering.budgets import set_budget
from opsgate.metering.models import ANY, budget_counters
from opsgate.metering.prices import PriceBook
from opsgate.metering.worstcase import call_worst_case_micro_usd
from opsgate.operations import get_operation
from opsgate.operations.io import input_from_file
from opsgate.routing.policy import policies_for
from opsgate.security.auth import TokenService
from opsgate.store.db import make_engine, upgrade
from opsgate.store.models import ledger_entries

REPO = Path(__file__).resolve().parents[2]
OP = "email-classify"
REQUESTS = 200
SLOW = "slow:4s"


def _body() -> dict:
    return input_from_file(OP, next((REPO / "examples").glob(f"{OP}.*")), None)


def gateway_worst_case(body: dict) -> int:
    """What the gateway reserves for ``body``: the same function on the same inputs."""
    op = get_operation(OP)
    request = op.prepare(op.Input.model_validate(body)).request
    chain = policies_for(Settings())[OP].chain
    book = PriceBook.from_settings(Settings())
    return call_worst_case_micro_usd(request, [f"{t.provider}/{t.model}" for t in chain], book)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def race_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """(database URL, number of gateway processes): SQLite with one, PostgreSQL with two."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'race.db'}"
        upgrade(url)
        yield url, 1
        return
    with fresh_postgres("race") as url:
        upgrade(url)
        yield url, 2


async def _fire(urls: list[str], token: str, body: dict, concurrency: int) -> list[httpx.Response]:
    """POST ``REQUESTS`` calls, at most ``concurrency`` in flight, alternating between ``urls``."""
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one(i: int) -> httpx.Response:
            async with gate:
                return await client.post(f"{urls[i % len(urls)]}/v1/operations/{OP}", json=body,
                                         headers={"Authorization": f"Bearer {token}"})

        return await asyncio.gather(*(one(i) for i in range(REQUESTS)))


class CounterSampler(threading.Thread):
    """Reads spent + reserved of every counter row every few milliseconds until stopped."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(daemon=True)
        self.engine, self.samples, self.peak = engine, 0, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        c = budget_counters.c
        while not self._stop_event.is_set():
            with self.engine.connect() as conn:
                for spent, reserved in conn.execute(select(c.spent_micro_usd, c.reserved_micro_usd)):
                    self.peak = max(self.peak, spent + reserved)
            self.samples += 1
            self._stop_event.wait(0.002)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _setup(url: str, tmp_path: Path) -> tuple[dict[str, str], str, int, dict]:
    secret = secrets.token_urlsafe(48)
    body = _body()
    limit = gateway_worst_case(body) * 5 // 2
    engine = make_engine(url)
    set_budget(engine, SystemClock(), user_id=ANY, operation=ANY, period="day", limit_micro_usd=limit)
    engine.dispose()
    token = TokenService(Settings(jwt_secret=secret), SystemClock()).issue("racer", "user")
    env = {"OPSGATE_DATABASE_URL": url, "OPSGATE_JWT_SECRET": secret,
           "OPSGATE_JWT_SECRET_FILE": str(tmp_path / "jwt")}
    return env, token, limit, body


def _intent_request_ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        bodies = [json.loads(b) for b in conn.execute(select(ledger_entries.c.body)).scalars()]
    return {b["request_id"] for b in bodies if b["kind"] == "intent"}


def test_overlapping_requests_admit_at_most_what_the_budget_holds(
    race_db: tuple[str, int], tmp_path: Path
) -> None:
    url, processes = race_db
    env, token, limit, body = _setup(url, tmp_path)
    engine = make_engine(url)
    sampler = CounterSampler(engine)
    try:
        with gateways(processes, env, tmp_path, faults=SLOW) as urls:
            sampler.start()
            responses = asyncio.run(_fire(urls, token, body, REQUESTS))
            sampler.stop()
        ok = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code == 402]
        assert len(ok) == 2 and len(refused) == REQUESTS - 2
        assert {r.json()["code"] for r in refused} == {"budget_exceeded"}
        assert _intent_request_ids(engine) == {r.json()["request_id"] for r in ok}
        with engine.connect() as conn:
            spent, reserved = conn.execute(
                select(budget_counters.c.spent_micro_usd, budget_counters.c.reserved_micro_usd)
            ).one()
        assert reserved == 0 and spent == sum(r.json()["cost_micro_usd"] for r in ok)
        assert spent <= limit and sampler.peak <= limit and sampler.samples > 10
    finally:
        engine.dispose()


def test_released_reservations_never_let_spent_plus_reserved_pass_the_limit(
    race_db: tuple[str, int], tmp_path: Path
) -> None:
    url, processes = race_db
    env, token, limit, body = _setup(url, tmp_path)
    engine = make_engine(url)
    sampler = CounterSampler(engine)
    try:
        with gateways(processes, env, tmp_path) as urls:
            sampler.start()
            responses = asyncio.run(_fire(urls, token, body, 16))
            sampler.stop()
        statuses = {r.status_code for r in responses}
        ok = [r for r in responses if r.status_code == 200]
        assert statuses <= {200, 402}
        assert len(ok) > 2  # released reservations admitted more calls than the slow run
        assert sampler.samples > 10 and 0 < sampler.peak <= limit
        with engine.connect() as conn:
            spent, reserved = conn.execute(
                select(budget_counters.c.spent_micro_usd, budget_counters.c.reserved_micro_usd)
            ).one()
        assert reserved == 0 and spent == sum(r.json()["cost_micro_usd"] for r in ok) <= limit
    finally:
        engine.dispose()
