"""The pieces of a rehearsal that need no gateway: plan scaling, cadence, sampling, the sandbox's
``errors:<provider>:<pct>`` fault profile, a request whose answer never comes."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from opsgate.rehearsal.driver import exchange
from opsgate.rehearsal.traffic import Gate, Population, cadence_s, scaled_plan
from opsgate.rollout.bucketing import bucket
from opsgate.sandbox.faults import FaultProfile, FaultProfileError, FaultState, Outcome


def test_48_hours_is_the_seed_plan_and_shorter_runs_scale_it() -> None:
    plan = scaled_plan(48)
    assert [(s.percentage, s.seconds) for s in plan.stages] == [(5, 86400), (25, 43200), (100, 43200)]
    assert plan.observation_s == 48 * 3600
    assert [s.seconds for s in scaled_plan(12).stages] == [21600, 10800, 10800]


def test_cadence_follows_the_seed_per_phase() -> None:
    assert [cadence_s(i) for i in range(4)] == [300, 600, 900, 900]


def test_traffic_scales_with_the_percentage_and_carries_fractions() -> None:
    pop = Population(users=1000, seed=3)
    assert [pop.calls_for(5, 300, 5.0) for _ in range(4)] == [2, 2, 2, 2]  # 1.25 a window: the floor
    assert [pop.calls_for(25, 600, 5.0) for _ in range(2)] == [12, 13]
    assert pop.calls_for(0, 900, 5.0) == 0


def test_draws_only_offered_opted_in_users() -> None:
    pop = Population(users=2000, seed=7)
    gates = {"email-compose": Gate(True, 25, "email-compose"), "task-breakdown": Gate(False, 100, "task-breakdown")}
    calls, deciding = pop.draw(gates, 50)
    assert len(calls) == 50 and set(deciding) <= set(pop.decided)
    assert all(op == "email-compose" and bucket(op, u) <= 25 and pop.decided[u] for u, op in calls)
    assert len(pop.active) == 200


def test_errors_profile_fails_exactly_pct_of_requests_with_400() -> None:
    state = FaultState("errors:anthropic:4")
    outcomes = [state.decide("anthropic") for _ in range(100)]
    failed = [i for i, d in enumerate(outcomes) if d.outcome is Outcome.STATUS]
    assert failed == [24, 49, 74, 99]
    assert {outcomes[i].status for i in failed} == {400}
    assert state.decide("deepseek").outcome is Outcome.OK
    assert FaultProfile.parse("errors:gemini:100").errors == {"gemini": 100}


@pytest.mark.parametrize("bad", ["errors:anthropic", "errors:anthropic:101", "errors:openai:5", "errors:gemini:x"])
def test_errors_profile_rejects_bad_arguments(bad: str) -> None:
    with pytest.raises(FaultProfileError):
        FaultProfile.parse(bad)


async def test_an_answer_that_never_comes_fails_naming_the_request() -> None:
    never = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/operations/email-compose", hang)
    async with TestServer(app) as server, aiohttp.ClientSession(f"http://{server.host}:{server.port}") as http:
        with pytest.raises(TimeoutError) as caught:
            await exchange(http, "POST", "/v1/operations/email-compose", b"{}", {}, check=False, timeout_s=0.2)
    assert str(caught.value) == "the gateway did not answer POST /v1/operations/email-compose within 0.2 s"
