"""The $0-overspend race through the HTTP API against the provider sandboxes.

Budget: the global daily budget is sized at 2.5 x the worst case the gateway reserves for the
request's first attempt (computed with the gateway's own :func:`attempt_worst_case_micro_usd`), so
at most two calls fit. (The issue's example is $0.010 against $0.004 per call; the ratio is what
matters.)

1. Slow profile (every provider answer takes seconds, so the 200 requests overlap): never more
   than two calls are held at once (read from the ledger's order; under load the first answers
   may return, and release room, before the last requests are decided), every other request is
   a 402 ``budget_exceeded``, the ledger holds an intent only for
   the admitted ones, and spend never goes above the limit. SQLite: one process; PostgreSQL: two
   gateway processes on one database.
2. No slow profile, 16 calls in flight at a time (calls finish and release while others
   arrive): a sampler reads the counters
   all along; spent + reserved never exceeds the limit at any sample.
3. Calls that fall back and calls that need a repair (``malformed:anthropic``: every Claude
   answer is cut after its 200, so each call falls back to DeepSeek; ``off-schema``: every other
   DeepSeek answer misses the schema, so a repair request follows), each further request
   extending the reservation first: the limit is never passed, and every µUSD spent is an
   attempt row.
4. Extensions refused at the edge: with a limit of six first-request worst cases plus less than
   one fallback's, all 200 overlapping calls are admitted or refused at the intent (six
   admitted); each admitted call's Claude answer is cut (charged its worst case), and its
   fallback finds no room: 402 after the intent, nothing more sent, spent = exactly the six
   worst cases, never above the limit.
5. ``--on-exhausted cheaper`` with a budget that fits only the cheapest target (DeepSeek, the
   chain's second; Claude never fits): every call is served by it, degraded, while it fits; the
   200 overlapping calls hold at most as many at once as the limit holds of its worst case, refuse the
   rest once less than one is left, and never pass the limit.
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
from sqlalchemy import Engine, select
from tests.budgets import ledgered_budget
from tests.gateways import gateway_processes
from tests.stores import fresh_postgres

from opsgate.clock import SystemClock
from opsgate.config import Settings
from opsgate.metering.budgets import budget_statuses
from opsgate.metering.models import ANY, REFUSE, ai_operation_attempts, budget_counters
from opsgate.metering.prices import PriceBook
from opsgate.metering.worstcase import attempt_worst_case_micro_usd
from opsgate.operations import get_operation
from opsgate.operations.io import input_from_file
from opsgate.operations.privacy import PrivacyPolicy
from opsgate.routing.policy import policies_for
from opsgate.security.auth import TokenService
from opsgate.store.db import make_engine, upgrade
from opsgate.store.models import ai_operation_log, ledger_entries

REPO = Path(__file__).resolve().parents[2]
OP = "email-classify"
REQUESTS = 200
SLOW = "slow:4s"


def _body() -> dict:
    return input_from_file(OP, next((REPO / "examples").glob(f"{OP}.*")), None)


def gateway_worst_case(body: dict, target: int = 0) -> int:
    """What the gateway holds for a request of ``body`` to the chain's ``target``-th model: the
    same function on the same inputs (the prompt as really sent, after the privacy step)."""
    op = get_operation(OP)
    request = PrivacyPolicy().minimise(OP, op.prepare(op.Input.model_validate(body)).request)[0]
    chain = policies_for(Settings())[OP].chain
    book = PriceBook.from_settings(Settings())
    return attempt_worst_case_micro_usd(request, f"{chain[target].provider}/{chain[target].model}", book)


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


def _setup(url: str, tmp_path: Path, limit: int | None = None, on_exhausted: str = REFUSE,
           ) -> tuple[dict[str, str], str, int, dict]:
    secret = secrets.token_urlsafe(48)
    body = _body()
    limit = limit if limit is not None else gateway_worst_case(body) * 5 // 2
    engine = make_engine(url)
    ledgered_budget(engine, SystemClock(), user_id=ANY, operation=ANY, period="day", limit_micro_usd=limit,
                    on_exhausted=on_exhausted)
    engine.dispose()
    token = TokenService(Settings(jwt_secret=secret), SystemClock()).issue("racer", "user")
    env = {"OPSGATE_DATABASE_URL": url, "OPSGATE_JWT_SECRET": secret,
           "OPSGATE_JWT_SECRET_FILE": str(tmp_path / "jwt")}
    return env, token, limit, body


def _intents(engine: Engine) -> dict[str, dict]:
    with engine.connect() as conn:
        bodies = [json.loads(b) for b in conn.execute(select(ledger_entries.c.body)).scalars()]
    return {b["request_id"]: b for b in bodies if b["kind"] == "intent"}


def _intent_request_ids(engine: Engine) -> set[str]:
    return set(_intents(engine))


def _most_in_flight(engine: Engine) -> int:
    """The most calls admitted and not yet ended at once, read from the ledger's order (an
    ``intent`` opens a call, its ``result`` ends it). Under load the first answers can come back
    before all 200 requests have been decided; what was admitted after a release says nothing
    about the race, so the tests count calls held at the same time, not calls admitted."""
    with engine.connect() as conn:
        bodies = [json.loads(b) for b in conn.execute(
            select(ledger_entries.c.body).order_by(ledger_entries.c.seq)).scalars()]
    open_calls: set[str] = set()
    most = 0
    for body in bodies:
        if body["kind"] == "intent":
            open_calls.add(body["request_id"])
        elif body["kind"] == "result":
            open_calls.discard(body["request_id"])
        most = max(most, len(open_calls))
    return most


def test_overlapping_requests_admit_at_most_what_the_budget_holds(
    race_db: tuple[str, int], tmp_path: Path
) -> None:
    url, processes = race_db
    env, token, limit, body = _setup(url, tmp_path)
    engine = make_engine(url)
    sampler = CounterSampler(engine)
    try:
        with gateway_processes(processes, env, tmp_path, faults=SLOW) as urls:
            sampler.start()
            responses = asyncio.run(_fire(urls, token, body, REQUESTS))
            sampler.stop()
        ok = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code == 402]
        assert _most_in_flight(engine) <= 2 and len(ok) >= 2 and len(ok) + len(refused) == REQUESTS
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
        with gateway_processes(processes, env, tmp_path) as urls:
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


def _results(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        bodies = [json.loads(b) for b in conn.execute(select(ledger_entries.c.body)).scalars()]
    return [b for b in bodies if b["kind"] in ("result", "extend")]


def _attempts_by_call(engine: Engine) -> list[list[tuple[str, str]]]:
    """Per call, its billed requests as (provider, billing), in order."""
    a = ai_operation_attempts.c
    calls: dict[str, list[tuple[str, str]]] = {}
    with engine.connect() as conn:
        for rid, provider, billing in conn.execute(select(a.request_id, a.provider, a.billing)
                                                   .order_by(a.request_id, a.seq)):
            calls.setdefault(rid, []).append((provider, billing))
    return list(calls.values())


def _counters(engine: Engine) -> tuple[int, int, int]:
    """(spent, reserved, the sum of every attempt row's cost)."""
    with engine.connect() as conn:
        spent, reserved = conn.execute(
            select(budget_counters.c.spent_micro_usd, budget_counters.c.reserved_micro_usd)).one()
        rows = conn.execute(select(ai_operation_attempts.c.cost_micro_usd)).scalars().all()
    return spent, reserved, sum(rows)


def test_fallbacks_and_repairs_extend_their_reservations_and_never_pass_the_limit(
    race_db: tuple[str, int], tmp_path: Path
) -> None:
    url, processes = race_db
    env, token, limit, body = _setup(url, tmp_path, limit=gateway_worst_case(_body()) * 30)
    env["OPSGATE_BREAKER_FAILURE_THRESHOLD"] = str(10 * REQUESTS)  # Claude stays in every chain
    engine = make_engine(url)
    sampler = CounterSampler(engine)
    try:
        with gateway_processes(processes, env, tmp_path, faults="malformed:anthropic,off-schema") as urls:
            sampler.start()
            responses = asyncio.run(_fire(urls, token, body, 16))
            sampler.stop()
        statuses = {r.status_code for r in responses}
        assert statuses <= {200, 402, 502} and 200 in statuses and 402 in statuses
        assert any(e["kind"] == "extend" for e in _results(engine))
        calls = _attempts_by_call(engine)
        assert any(("anthropic", "estimated") in c and ("deepseek", "reported") in c for c in calls)  # fallbacks
        assert any(c.count(("deepseek", "reported")) == 2 for c in calls)  # repairs
        spent, reserved, attempts = _counters(engine)
        assert reserved == 0 and spent == attempts <= limit
        assert sampler.samples > 10 and sampler.peak <= limit
    finally:
        engine.dispose()


def test_an_extension_without_room_stops_the_call_with_a_402_after_its_intent(
    race_db: tuple[str, int], tmp_path: Path
) -> None:
    url, processes = race_db
    first, fallback = gateway_worst_case(_body()), gateway_worst_case(_body(), 1)
    limit = 6 * first + fallback // 2
    env, token, limit, body = _setup(url, tmp_path, limit=limit)
    engine = make_engine(url)
    try:
        with gateway_processes(processes, env, tmp_path, faults=f"{SLOW},malformed:anthropic") as urls:
            responses = asyncio.run(_fire(urls, token, body, REQUESTS))
        assert {r.status_code for r in responses} == {402}
        assert {r.json()["code"] for r in responses} == {"budget_exceeded"}
        admitted = _intent_request_ids(engine)
        results = [e for e in _results(engine) if e["kind"] == "result"]
        assert len(admitted) == 6 and {e["request_id"] for e in results} == admitted
        assert {(e["error_code"], e["cost_micro_usd"]) for e in results} == {("budget_exceeded", first)}
        spent, reserved, attempts = _counters(engine)
        assert (spent, reserved, attempts) == (6 * first, 0, 6 * first) and spent <= limit
    finally:
        engine.dispose()


def test_a_cheaper_budget_serves_degraded_calls_while_the_cheapest_target_fits(
    race_db: tuple[str, int], tmp_path: Path
) -> None:
    url, processes = race_db
    claude, deepseek, gemini = (gateway_worst_case(_body(), i) for i in range(3))
    assert deepseek < gemini < claude  # the chain's cheapest target is its second
    fits = 20
    env, token, limit, body = _setup(url, tmp_path, limit=fits * deepseek + deepseek // 2,
                                     on_exhausted="cheaper")
    assert limit < claude
    engine = make_engine(url)
    sampler = CounterSampler(engine)
    try:
        with gateway_processes(processes, env, tmp_path, faults=SLOW) as urls:
            sampler.start()
            responses = asyncio.run(_fire(urls, token, body, REQUESTS))
            sampler.stop()
        ok = [r.json() for r in responses if r.status_code == 200]
        refused = [r.json() for r in responses if r.status_code == 402]
        assert _most_in_flight(engine) <= fits and len(ok) >= fits and len(ok) + len(refused) == REQUESTS
        assert {(r["degraded"], r["provider"]) for r in ok} == {(True, "deepseek")}
        assert {r["code"] for r in refused} == {"budget_exceeded"}
        intents = _intents(engine)
        assert set(intents) == {r["request_id"] for r in ok}
        assert {(i["degraded"], i["target"]) for i in intents.values()} == {
            (True, "deepseek/deepseek-flash")}
        with engine.connect() as conn:
            logged = conn.execute(select(ai_operation_log.c.degraded, ai_operation_log.c.provider)).all()
        assert [tuple(row) for row in logged] == [(True, "deepseek")] * len(ok)
        [status] = budget_statuses(engine, SystemClock().now())
        assert (status.degraded_today, status.refused_today) == (len(ok), len(refused))
        assert status.reserved_micro_usd == 0
        assert status.spent_micro_usd == sum(r["cost_micro_usd"] for r in ok) <= limit
        assert sampler.samples > 10 and sampler.peak <= limit
        assert limit - sampler.peak < deepseek  # refused only once the cheapest no longer fit
    finally:
        engine.dispose()
