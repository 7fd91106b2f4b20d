"""Notifications end to end against loopback receivers: every channel, retries with 429 and 500,
Discord splitting, escalation and acknowledgement, resolution, two workers."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import pytest
from sqlalchemy import insert, select, text
from tests.ledgered import entries
from tests.monitoring.worker_env import DISCORD, PAGERDUTY, Env, cycle

from opsgate.ledger.errors import LedgerUnavailable
from opsgate.monitoring.models import outbox
from opsgate.monitoring.notifiers import Notification
from opsgate.monitoring.outbox import outbox_rows
from opsgate.monitoring.rules import Finding, Severity
from opsgate.store.models import ai_operation_log


def failing_calls(env: Env, op: str = "email-compose", n: int = 100, errors: int = 10) -> None:
    now = env.clock.now()
    with env.engine.begin() as conn:
        conn.execute(insert(ai_operation_log), [
            {"request_id": f"{op}-{now.timestamp()}-{i}", "user_id": "u", "operation": op, "provider": "anthropic",
             "model": "m", "status": "error" if i < errors else "ok", "attempts": 1, "latency_ms": 100.0,
             "cost_micro_usd": 1, "created_at": now - timedelta(seconds=30)} for i in range(n)])


async def test_monitoring_p1_reaches_every_channel_once(env: Env) -> None:
    failing_calls(env)
    worker = env.worker()
    assert await cycle(worker)
    [incident] = worker.incidents.list()
    assert (incident["severity"], incident["rule"], incident["state"]) == ("P1", "error_rate", "open")
    [pd] = env.http.bodies(PAGERDUTY)
    assert pd["event_action"] == "trigger" and pd["dedup_key"] == "error_rate:operation=email-compose"
    assert pd["payload"]["severity"] == "critical" and len(pd["payload"]["summary"]) <= 1024
    assert env.http.received[0].query == {"wait": "true"} or any(
        r.query == {"wait": "true"} for r in env.http.received if r.path == DISCORD)
    [discord] = env.http.bodies(DISCORD)
    assert discord["allowed_mentions"] == {"parse": []} and "email-compose" in discord["content"]
    [sms] = env.http.bodies(env.sms_path)
    assert sms["To"] == "+15005550001" and sms["From"] == "+15005550006"
    assert [r.auth.split()[0] for r in env.http.received if r.path == env.sms_path] == ["Basic"]
    assert [m["to"] for m in env.smtp.messages] == ["oncall@example.test"]
    assert await cycle(worker)  # nothing new: no second copy anywhere
    assert len(env.http.received) == 3 and len(env.smtp.messages) == 1


async def test_monitoring_retry_429_then_500s_then_200_delivers_exactly_once(env: Env) -> None:
    start = env.clock.now()
    env.http.script[DISCORD] = [(429, {"Retry-After": "30"})]
    env.http.failing = lambda path: (500, {}) if path in (DISCORD, PAGERDUTY) and (
        env.clock.now() - start).total_seconds() < 150 and not env.http.script.get(DISCORD) else None
    failing_calls(env)
    worker = env.worker()
    await cycle(worker)
    assert env.http.bodies(DISCORD) == [] and env.http.bodies(PAGERDUTY) == []
    [row] = _rows(env, "discord")
    assert row["state"] == "pending" and row["last_status"] == 429
    assert row["next_attempt_at"].replace(tzinfo=None) >= (start + timedelta(seconds=30)).replace(tzinfo=None)
    for _ in range(60):  # three minutes in five-second ticks
        env.clock.advance(5)
        await cycle(worker)
    assert len(env.http.bodies(DISCORD)) == 1 and len(env.http.bodies(PAGERDUTY)) == 1
    [row] = _rows(env, "discord")
    assert row["state"] == "sent" and row["attempts"] >= 3


async def test_monitoring_2001_character_discord_alert_arrives_whole(env: Env) -> None:
    worker = env.worker()
    note = Notification("trigger", "inc-x", "k:a=b", "P1", "long", "z" * 2001, env.clock.now().isoformat())
    rows = outbox_rows(worker.notifiers, note, [("discord", "")], "inc-x:trigger", env.clock.now())
    with env.engine.begin() as conn:
        conn.execute(insert(outbox), rows)
    await worker.outbox.dispatch_once()
    parts = [b["content"] for b in env.http.bodies(DISCORD)]
    assert len(parts) == 2 and all(len(p) <= 2000 for p in parts)
    assert "".join(re.sub(r"^\[\d+/\d+\] ", "", p) for p in parts) == note.text()


async def test_monitoring_acknowledged_alert_stops_escalating(env: Env) -> None:
    worker = env.worker()
    f = Finding("p99_latency", {"operation": "calendar-time"}, True, Severity.P2, "6000 ms", "slow", "p99 slow",
                pages=False)
    worker.incidents.observe(f)
    await worker.outbox.dispatch_once()
    assert env.http.bodies(PAGERDUTY) == [] and len(env.http.bodies(DISCORD)) == 1
    env.clock.advance(15 * 60 + 1)  # P2 response time passed: level 1 adds PagerDuty and SMS
    await cycle(worker)
    assert [b["event_action"] for b in env.http.bodies(PAGERDUTY)] == ["trigger"]
    assert len(env.http.bodies(env.sms_path)) == 1
    [incident] = worker.incidents.list()
    worker.incidents.acknowledge(incident["id"], "operator-1")
    await cycle(worker)
    assert [b["event_action"] for b in env.http.bodies(PAGERDUTY)] == ["trigger", "acknowledge"]
    env.clock.advance(3 * 3600)
    await cycle(worker)
    assert [m["to"] for m in env.smtp.messages].count("admin@example.test") == 0
    assert len(env.http.bodies(env.sms_path)) == 1
    shown = worker.incidents.show(incident["id"])
    assert [e["kind"] for e in shown["timeline"]] == ["opened", "escalated", "acknowledged"]
    resolved = worker.incidents.resolve(incident["id"], "operator-1", "index added")
    assert resolved["resolution_note"] == "index added"
    await worker.outbox.dispatch_once()
    assert env.http.bodies(PAGERDUTY)[-1] == {"event_action": "resolve",
                                              "dedup_key": "p99_latency:operation=calendar-time",
                                              "routing_key": env.http.bodies(PAGERDUTY)[-1]["routing_key"]}


async def test_monitoring_unacknowledged_alert_reaches_admins(env: Env) -> None:
    worker = env.worker()
    worker.incidents.observe(Finding("cost_discrepancy", {"provider": "gemini"}, True, Severity.P2, "3%", "c", "c"))
    for _ in range(2):
        env.clock.advance(15 * 60 + 1)
        await cycle(worker)
    assert "admin@example.test" in [m["to"] for m in env.smtp.messages]
    assert "+15005550009" in [b["To"] for b in env.http.bodies(env.sms_path)]


async def test_monitoring_two_workers_page_once_per_dedup_key(env: Env) -> None:
    failing_calls(env)
    a, b = env.worker("a", "a.lock"), env.worker("b", "b.lock")  # separate locks: both lead
    await asyncio.gather(cycle(a), cycle(b), cycle(a), cycle(b))
    pages = env.http.bodies(PAGERDUTY)
    assert [p["dedup_key"] for p in pages] == ["error_rate:operation=email-compose"]
    assert len(a.incidents.list()) == 1


async def test_monitoring_only_one_worker_leads(env: Env) -> None:
    failing_calls(env)
    a, b = env.worker("a"), env.worker("b")
    assert await a.tick() is True
    assert await b.tick() is False
    a.leadership.release()
    assert await b.tick() is True


async def test_monitoring_flapping_condition_fires_per_episode(env: Env) -> None:
    worker = env.worker()
    firing = Finding("p99_latency", {"operation": "x"}, True, Severity.P2, "6 s", "slow", "slow", pages=False)
    clear = Finding("p99_latency", {"operation": "x"}, False, value="1 s")
    for f in (firing, firing, clear, firing):
        worker.incidents.observe(f)
    incidents = worker.incidents.list()
    assert sorted((i["episode"], i["state"]) for i in incidents) == [(1, "resolved"), (2, "open")]


def _rows(env: Env, channel: str) -> list[dict]:
    with env.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(outbox).where(outbox.c.channel == channel)).mappings()]


async def test_an_acknowledgement_the_ledger_cannot_take_leaves_the_incident_open(env: Env) -> None:
    """An incident's change commits in the transaction of its ledger entry: when the entry cannot
    be written the acknowledgement does not take effect (it used to be committed first) and
    queues no notification; once the ledger takes entries again it goes through."""
    worker = env.worker()
    worker.incidents.observe(Finding("p99_latency", {"operation": "calendar-time"}, True, Severity.P2,
                                     "6000 ms", "slow", "p99 slow", pages=False))
    [incident] = worker.incidents.list()
    with env.engine.begin() as conn:
        conn.execute(text("CREATE TRIGGER refuse_entries BEFORE INSERT ON ledger_entries "
                          "BEGIN SELECT RAISE(ABORT, 'ledger refused'); END"))
    with pytest.raises(LedgerUnavailable):
        worker.incidents.acknowledge(incident["id"], "operator-1")
    shown = worker.incidents.show(incident["id"])
    assert (shown["state"], [e["kind"] for e in shown["timeline"]]) == ("open", ["opened"])
    with env.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER refuse_entries"))
    assert worker.incidents.acknowledge(incident["id"], "operator-1")["state"] == "acknowledged"
    assert [e["actor"] for e in entries(env.engine, "incident.acknowledged")] == ["operator-1"]
