"""Faults a field trial found in the worker: a receiver that never answers, an untrusted
Retry-After, a resolve overtaking its rate-limited trigger, escalations queued for retry that an
acknowledgement must stop, and a periodic ledger check blind to a rollback below an anchor."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import delete, insert, select
from tests.monitoring.worker_env import DISCORD, PAGERDUTY, Env, anchored_worker, cycle

from opsgate.ledger.guards import drop_triggers
from opsgate.ledger.models import ledger_checkpoints
from opsgate.monitoring.models import incidents, outbox, signals
from opsgate.monitoring.notifiers import Notification
from opsgate.monitoring.outbox import outbox_rows
from opsgate.monitoring.rules import Finding, Severity
from opsgate.store.models import ledger_entries


def _rows(env: Env, channel: str) -> list[dict]:
    with env.engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            select(outbox).where(outbox.c.channel == channel).order_by(outbox.c.id)).mappings()]


def _queue(env: Env, event: str, incident: str = "inc-o") -> None:
    worker_notifiers = env.worker().notifiers
    note = Notification(event, incident, "k:a=b", "P1", f"{event} title", event, env.clock.now().isoformat())
    with env.engine.begin() as conn:
        conn.execute(insert(outbox), outbox_rows(worker_notifiers, note, [("discord", "")],
                                                 f"{incident}:{event}", env.clock.now()))


async def test_receiver_that_never_answers_cannot_freeze_the_worker(env: Env) -> None:
    env.http.hang = {DISCORD}
    worker = env.worker()
    worker.outbox.send_timeout_s = 0.3
    worker.incidents.observe(Finding("cost_discrepancy", {"provider": "gemini"}, True, Severity.P1, "3%", "c", "c"))
    assert await asyncio.wait_for(cycle(worker), 20)
    [row] = _rows(env, "discord")
    assert (row["state"], row["attempts"], row["last_error"]) == ("pending", 1, "no answer within 0.3 s")
    assert [b["event_action"] for b in env.http.bodies(PAGERDUTY)] == ["trigger"]


@pytest.mark.parametrize("value", ["inf", "nan", "1e300", "Fri, 31 Dec 9999 23:59:59 GMT"])
async def test_untrusted_retry_after_is_capped(env: Env, value: str) -> None:
    env.http.script[DISCORD] = [(429, {"Retry-After": value})]
    worker = env.worker()
    _queue(env, "trigger")
    assert await worker.outbox.dispatch_once() == 0
    [row] = _rows(env, "discord")
    wait = (row["next_attempt_at"].replace(tzinfo=None) - env.clock.now().replace(tzinfo=None)).total_seconds()
    assert row["state"] == "pending" and 0 < wait <= worker.outbox.max_retry_after_s
    env.clock.advance(worker.outbox.max_retry_after_s)
    assert await worker.outbox.dispatch_once() == 1


async def test_resolve_never_overtakes_its_rate_limited_trigger(env: Env) -> None:
    env.http.script[DISCORD] = [(429, {"Retry-After": "60"})]
    worker = env.worker()
    _queue(env, "trigger")
    _queue(env, "resolve")
    _queue(env, "trigger", incident="inc-other")  # another stream is not held up
    await worker.outbox.dispatch_once()
    assert [b["content"].split(":")[0] for b in env.http.bodies(DISCORD)] == ["[P1] TRIGGER"]
    assert [r["state"] for r in _rows(env, "discord")] == ["pending", "pending", "sent"]
    env.clock.advance(61)
    assert await worker.outbox.dispatch_once() == 2  # the trigger, then its resolve
    assert [b["content"].split(":")[0] for b in env.http.bodies(DISCORD)] == [
        "[P1] TRIGGER", "[P1] TRIGGER", "[P1] RESOLVE"]
    assert [r["state"] for r in _rows(env, "discord")] == ["sent", "sent", "sent"]


async def test_acknowledgement_cancels_escalations_queued_for_retry(env: Env) -> None:
    worker = env.worker()
    worker.incidents.observe(Finding("p99_latency", {"operation": "calendar-time"}, True, Severity.P2, "6000 ms",
                                     "slow", "p99 slow", pages=False))
    await worker.outbox.dispatch_once()
    env.http.failing = lambda path: (503, {})
    env.clock.advance(15 * 60 + 1)  # level 1 adds PagerDuty and SMS, both answer 503
    await cycle(worker)
    queued = [r for r in _rows(env, "pagerduty") + _rows(env, "sms") if ":escalate:" in r["notify_key"]]
    assert queued and all(r["state"] == "pending" for r in queued)
    [incident] = worker.incidents.list()
    worker.incidents.acknowledge(incident["id"], "operator-1")
    env.http.failing = None
    env.clock.advance(120)
    await cycle(worker)
    after = {r["id"]: r["state"] for r in _rows(env, "pagerduty") + _rows(env, "sms")}
    assert {after[r["id"]] for r in queued} == {"cancelled"}
    assert env.http.bodies(env.sms_path) == []
    # the escalation's trigger was cancelled; the acknowledgement itself still goes out
    assert [b["event_action"] for b in env.http.bodies(PAGERDUTY)] == ["acknowledge"]


async def test_periodic_ledger_check_sees_a_database_rolled_back_below_its_anchor(env: Env, tmp_path) -> None:
    worker = await anchored_worker(env, tmp_path)
    assert worker.verify_ledger() is True
    with env.engine.begin() as conn:  # what restoring an older backup leaves behind
        drop_triggers(conn)
        conn.execute(delete(ledger_entries).where(ledger_entries.c.seq >= 4))
        conn.execute(delete(ledger_checkpoints))
    assert worker.verify_ledger() is False
    with env.engine.connect() as conn:
        detail = conn.execute(select(signals.c.detail).order_by(signals.c.id.desc())).scalars().first()
    assert detail == "4 entries: rolled_back at seq 4"


async def test_stop_cancels_a_tick_stuck_on_a_receiver(env: Env) -> None:
    env.http.hang = {DISCORD}
    worker = env.worker()
    worker.outbox.send_timeout_s = 3600.0  # only the stop can end this send
    worker.incidents.observe(Finding("cost_discrepancy", {"provider": "gemini"}, True, Severity.P1, "3%", "c", "c"))
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    while not env.http.hang_seen:
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(running, 30)
    assert worker.leadership.held is False
    [row] = _rows(env, "discord")
    assert row["state"] == "sending"  # its claim expires and another worker takes it over


async def test_escalation_carries_the_latest_figures_not_the_opening_ones(env: Env) -> None:
    worker = env.worker()
    for value in ("6000 ms", "9400 ms"):
        worker.incidents.observe(Finding("p99_latency", {"operation": "calendar-time"}, True, Severity.P2, value,
                                         f"p99 is {value}", "p99 slow", pages=False))
    await worker.outbox.dispatch_once()
    assert "p99 is 6000 ms" in env.http.bodies(DISCORD)[0]["content"]  # the trigger: figures at opening
    env.clock.advance(15 * 60 + 1)  # P2 response time passed: escalated to PagerDuty and SMS
    await cycle(worker)
    [page] = env.http.bodies(PAGERDUTY)
    assert "p99 is 9400 ms" in str(page["payload"]) and "6000" not in str(page["payload"])


async def test_a_send_cut_off_by_a_worker_crash_is_counted_before_it_goes_out(env: Env) -> None:
    """tester-crash F8: a worker killed mid-send, the row re-sent after its claim expired, showed
    ``attempts = 1`` after two sends; the claim now counts the attempt, durably before the send."""
    crashed = env.worker()
    _queue(env, "trigger")
    [claimed] = crashed.outbox.claim()  # the worker claims the row, then dies before it finishes
    [row] = _rows(env, "discord")
    assert (claimed["attempts"], row["state"], row["attempts"]) == (1, "sending", 1)
    assert env.http.bodies(DISCORD) == []
    env.clock.advance(crashed.outbox.claim_s)  # the dead worker's claim expires
    restarted = env.worker()
    assert await restarted.outbox.dispatch_once() == 1
    [row] = _rows(env, "discord")
    assert (row["state"], row["attempts"], row["claimed_by"]) == ("sent", 2, None)
    assert len(env.http.bodies(DISCORD)) == 1  # the only send that reached the receiver


async def test_attempts_count_failed_sends_a_crashed_one_and_never_a_cancelled_row(env: Env) -> None:
    env.http.script[DISCORD] = [(503, {}), (503, {})]
    worker = env.worker()
    _queue(env, "trigger")
    assert await worker.outbox.dispatch_once() == 0
    env.clock.advance(1)  # the first backoff: 2 ** (1 - 1) s
    assert await worker.outbox.dispatch_once() == 0
    [row] = _rows(env, "discord")
    wait = (row["next_attempt_at"].replace(tzinfo=None) - env.clock.now().replace(tzinfo=None)).total_seconds()
    assert (row["state"], row["attempts"], row["last_status"], wait) == ("pending", 2, 503, 2.0)
    env.clock.advance(2)
    [claimed] = env.worker().outbox.claim()  # a third send, cut off by a crash
    assert claimed["attempts"] == 3
    env.clock.advance(worker.outbox.claim_s)
    assert await worker.outbox.dispatch_once() == 1
    assert [r["attempts"] for r in _rows(env, "discord")] == [4]  # 503, 503, crashed, 204
    assert len(env.http.bodies(DISCORD)) == 1  # the one the receiver accepted (it refused two with 503)
    with env.engine.begin() as conn:  # an incident resolved meanwhile: its escalation is cancelled
        conn.execute(insert(incidents).values(
            id="inc-done", dedup_key="k", episode=1, rule="r", severity="P1", title="t", summary="s",
            labels="{}", pages=True, state="resolved", opened_at=env.clock.now(), escalation_level=0,
            last_notified_at=env.clock.now(), repeats=0, version=1))
    _queue(env, "escalate", incident="inc-done")
    assert await worker.outbox.dispatch_once() == 0
    assert [(r["state"], r["attempts"]) for r in _rows(env, "discord")] == [("sent", 4), ("cancelled", 0)]
