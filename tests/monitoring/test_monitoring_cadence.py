"""The worker's two loops: a receiver that accepts and never answers (a real loopback HTTP server)
holds up its own channel only, never the canary evaluation, the rules or the other channels."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select
from tests.monitoring.worker_env import DISCORD, PAGERDUTY, Env

from opsgate.monitoring.notifiers import Notification
from opsgate.monitoring.outbox import outbox_rows
from opsgate.monitoring.models import outbox
from opsgate.monitoring.rules import Finding, Severity
from opsgate.monitoring.worker import Worker
from opsgate.rollout.controller import Plan, Stage
from opsgate.rollout.models import rollout_decisions


def _evaluations(env: Env) -> int:
    with env.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(rollout_decisions).where(
            rollout_decisions.c.event == "evaluate")).scalar_one()


def _worker(env: Env) -> Worker:
    settings = env.settings.model_copy(update={"worker_tick_s": 0.02, "canary_eval_interval_s": 5.0})
    worker = Worker(settings, env.engine, env.ledger, env.clock, env.session, worker_id="w1")
    worker.outbox.send_timeout_s = 3600.0  # only the stop can end a send to the hanging receiver
    return worker


async def _until(condition, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_hanging_receiver_does_not_delay_the_canary_evaluation(env: Env) -> None:
    env.http.hang = {DISCORD}
    worker = _worker(env)
    worker.rollout.ensure_toggles(["email-compose"])
    worker.rollout.start_rollout(["email-compose"], Plan((Stage(5, 3600),), 3600), "test")
    worker.incidents.observe(Finding("cost_discrepancy", {"provider": "gemini"}, True, Severity.P2, "3%", "c", "c"))
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await _until(lambda: env.http.hang_seen == 1 and _evaluations(env) == 1)
    for due in range(2, 7):  # five more canary intervals while the Discord send hangs
        env.clock.advance(5.0)
        await _until(lambda: _evaluations(env) == due)  # noqa: B023 (awaited within the iteration)
    # the other channels were not held up either
    await _until(lambda: env.http.bodies(PAGERDUTY) and env.smtp.messages)
    assert [b["event_action"] for b in env.http.bodies(PAGERDUTY)] == ["trigger"]
    assert [m["to"] for m in env.smtp.messages] == ["oncall@example.test"]
    stop.set()
    await asyncio.wait_for(running, 10)
    assert worker.leadership.held is False
    with env.engine.connect() as conn:
        states = dict(conn.execute(select(outbox.c.channel, outbox.c.state)).all())
    assert states == {"discord": "sending", "email": "sent", "pagerduty": "sent"}  # discord: sent again later


async def test_sends_on_one_channel_are_concurrent_up_to_the_bound(env: Env) -> None:
    env.http.hang = {DISCORD}
    worker = _worker(env)
    worker.outbox.per_channel = 3
    for i in range(5):  # five incidents: five streams, so all five are due at once
        note = Notification("trigger", f"inc-{i}", "k:a=b", "P1", "t", "s", env.clock.now().isoformat())
        with env.engine.begin() as conn:
            conn.execute(outbox.insert(), outbox_rows(worker.notifiers, note, [("discord", "")],
                                                      f"inc-{i}:trigger", env.clock.now()))
    sending = asyncio.create_task(worker.outbox.dispatch_once())
    await _until(lambda: env.http.hang_seen == 3)
    await asyncio.sleep(0.2)
    assert env.http.hang_seen == 3  # the bound: never a fourth in flight on the channel
    sending.cancel()
    await asyncio.gather(sending, return_exceptions=True)
