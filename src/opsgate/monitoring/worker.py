"""``opsgate worker``: the periodic jobs, run by one leader among any number of workers.

Leadership: PostgreSQL ``pg_try_advisory_lock(LEADER_KEY)`` held on a dedicated session (the
server releases it when that session dies); SQLite an exclusive ``flock`` on
``worker_lock_file`` (the kernel releases it when the process dies). A standby retries every tick
and takes over as soon as the leader is gone. The leader records itself in ``monitoring_workers``.

Two loops run side by side while the worker leads, each every ``worker_tick_s``:

- the jobs (:meth:`Worker.tick`), each on its cadence: signals → incidents (and disabling an
  operation after a budget enforcement failure); alert rules every ``alert_eval_interval_s`` (with
  the outage fallback: demote / restore); the canary evaluation every ``canary_eval_interval_s``
  while a rollout is active; ledger verification hourly; escalations and repeats;
- the deliveries (:meth:`Worker.deliver`): the outbox, one drain per channel, at most
  ``Outbox.per_channel`` sends in flight on each. A receiver that hangs holds up its own channel
  (up to ``send_timeout_s`` a send), never the other channels, the rules or the canary: an
  automatic rollback is never late because a pager is slow.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
from datetime import datetime
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import IO, Any

import aiohttp
from sqlalchemy import Connection, Engine, select, text, update
from sqlalchemy.exc import DBAPIError

from opsgate.clock import Clock
from opsgate.config import Settings
from opsgate.errors import OpsgateError
from opsgate.ledger.scheduled import verify_configured
from opsgate.ledger.writer import Ledger
from opsgate.monitoring.escalation import Contacts
from opsgate.monitoring.health import ENFORCEMENT_FAILURE, LEDGER_VERIFY
from opsgate.monitoring.hooks import attach, record_signal
from opsgate.monitoring.incidents import IncidentService
from opsgate.monitoring.models import alerts, signals, workers
from opsgate.monitoring.notifiers import Notifier
from opsgate.monitoring.notifiers.discord import DiscordNotifier
from opsgate.monitoring.notifiers.email import EmailNotifier
from opsgate.monitoring.notifiers.pagerduty import PagerDutyNotifier
from opsgate.monitoring.notifiers.sms import TwilioSmsNotifier
from opsgate.monitoring.outbox import Outbox
from opsgate.monitoring.providers import demote, restore
from opsgate.routing.served import MODEL_SUBSTITUTED, MODEL_UNAVAILABLE
from opsgate.monitoring.rules import OUTAGE, Finding, RuleConfig, Severity, evaluate
from opsgate.rollout.controller import Thresholds
from opsgate.rollout.service import RolloutService
from opsgate.store.db import begin_write, is_sqlite

log = logging.getLogger("opsgate.monitoring")

MODEL_EVENTS = frozenset({MODEL_SUBSTITUTED, MODEL_UNAVAILABLE})
"""Model events (routing.served) that open an incident per (operation, target) episode."""

LEADER_KEY = 0x6F70_7367_6174_6557
"""PostgreSQL advisory lock id of worker leadership (ASCII "opsgateW")."""
LEDGER_VERIFY_INTERVAL_S = 3600.0


class Leadership:
    """One worker's claim to lead. :meth:`try_acquire` is non-blocking and idempotent."""

    def __init__(self, engine: Engine, lock_file: Path) -> None:
        self.engine = engine
        self.lock_file = lock_file
        self._file: IO[str] | None = None
        self._conn: Connection | None = None

    @property
    def held(self) -> bool:
        """Whether this worker leads."""
        return self._file is not None or self._conn is not None

    def try_acquire(self) -> bool:
        """Take leadership if nobody holds it; True when this worker leads. A PostgreSQL leader
        first checks that its session is alive: a database restart ends the session and frees the
        lock for anyone, so a leader that lost its session contends again like a standby."""
        if self._conn is not None and not _alive(self._conn):
            log.warning("the database closed the leader's session: leadership lost, contending again")
            self.release()
        if self.held:
            return True
        if is_sqlite(str(self.engine.url)):
            self.lock_file.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.lock_file, "a+")  # noqa: SIM115 (held open while leading)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                return False
            self._file = handle
            return True
        conn = self.engine.connect()
        if conn.execute(text(f"SELECT pg_try_advisory_lock({LEADER_KEY})")).scalar():
            conn.commit()
            self._conn = conn
            return True
        conn.close()
        return False

    def release(self) -> None:
        """Give leadership up (closing the lock file / ending the session releases the lock; the
        session's connection is discarded, not returned to the pool where it would keep the lock)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._conn is not None:
            self._conn.invalidate()
            self._conn.close()
            self._conn = None


def _alive(conn: Connection) -> bool:
    try:
        conn.execute(text("SELECT 1"))
        conn.commit()
        return True
    except DBAPIError:
        return False


def build_notifiers(settings: Settings, session: aiohttp.ClientSession) -> dict[str, Notifier]:
    """A notifier for every channel whose settings are complete, its credentials read through
    :meth:`~opsgate.config.Settings.secret` (``ConfigError`` for an unresolved ``op://``
    reference)."""
    found: dict[str, Notifier] = {}
    if webhook := settings.secret("discord_webhook_url"):
        found["discord"] = DiscordNotifier(session, webhook)
    if routing_key := settings.secret("pagerduty_routing_key"):
        found["pagerduty"] = PagerDutyNotifier(session, settings.pagerduty_url, routing_key)
    if settings.twilio_account_sid and (auth_token := settings.secret("twilio_auth_token")) and settings.twilio_from:
        found["sms"] = TwilioSmsNotifier(session, settings.twilio_base_url, settings.twilio_account_sid,
                                         auth_token, settings.twilio_from)
    if settings.smtp_host and settings.email_from:
        found["email"] = EmailNotifier(
            settings.smtp_host, settings.smtp_port, settings.email_from, username=settings.smtp_username,
            password=settings.secret("smtp_password"), starttls=settings.smtp_starttls)
    return found


def incident_service(settings: Settings, engine: Engine, ledger: Ledger, clock: Clock,
                     session: aiohttp.ClientSession | None) -> IncidentService:
    """The :class:`IncidentService` with the configured notifiers and contacts. Without a
    ``session`` (a CLI command) the notifiers only render: the worker sends the outbox."""
    notifiers = build_notifiers(settings, session)  # type: ignore[arg-type]  # None: they only render, never send
    return IncidentService(engine, ledger, clock, notifiers, Contacts.from_settings(settings, frozenset(notifiers)),
                           repeat_interval_s=settings.alert_repeat_interval_s)


class Worker:
    """The jobs of one worker process over ``engine`` (see the module docstring)."""

    def __init__(self, settings: Settings, engine: Engine, ledger: Ledger, clock: Clock,
                 session: aiohttp.ClientSession, *, worker_id: str | None = None,
                 incidents: IncidentService | None = None, rollout: RolloutService | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.ledger = ledger
        self.clock = clock
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.incidents = incidents or incident_service(settings, engine, ledger, clock, session)
        self.notifiers, self.contacts = self.incidents.notifiers, self.incidents.contacts
        self.outbox = Outbox(engine, clock, self.notifiers, self.worker_id, self.contacts.recipients,
                             max_backoff_s=settings.outbox_max_backoff_s, give_up_s=settings.outbox_give_up_s)
        self.rules = RuleConfig.from_settings(settings)
        if rollout is None:  # not from open_services, which attaches its alert events itself
            rollout = RolloutService(engine, ledger, clock, limits=Thresholds.from_settings(settings))
            attach(engine, clock, None, rollout)
        self.rollout = rollout
        self.leadership = Leadership(engine, settings.worker_lock_file)
        self._last: dict[str, float] = {}

    async def tick(self) -> bool:
        """Run every due job if this worker leads; False when it is a standby."""
        if not self.leadership.try_acquire():
            return False
        await asyncio.to_thread(self._heartbeat)
        if self._due("ledger", LEDGER_VERIFY_INTERVAL_S):
            await asyncio.to_thread(self.verify_ledger)
        await asyncio.to_thread(self.handle_signals)
        if self._due("rules", self.settings.alert_eval_interval_s):
            await asyncio.to_thread(self.evaluate_rules)
        if self._due("canary", self.settings.canary_eval_interval_s):
            await asyncio.to_thread(self.evaluate_canary)
        await asyncio.to_thread(self.incidents.escalate_due)
        await asyncio.to_thread(self.incidents.repeat_due)
        return True

    async def deliver(self) -> int:
        """Send the due outbox rows if this worker leads (a standby sends nothing): every channel
        drained side by side, each until a round sends nothing; returns how many were sent."""
        if not self.leadership.held:
            return 0
        return sum(await asyncio.gather(*(self._drain(c) for c in self.outbox.channels)))

    async def _drain(self, channel: str) -> int:
        sent = 0
        while n := await self.outbox.dispatch_once(channel=channel):
            sent += n
        return sent

    async def run(self, stop: asyncio.Event) -> None:
        """:meth:`tick` and :meth:`deliver`, each in its own loop every ``worker_tick_s``, until
        ``stop`` is set; errors are logged. Setting ``stop`` (SIGTERM) cancels both loops with
        whatever they are doing: shutdown never waits on a receiver (a send cut short keeps its
        claim, which expires, and the row is sent again: at least once)."""
        loops = [asyncio.create_task(self._every(stop, self.tick, "worker tick")),
                 asyncio.create_task(self._every(stop, self.deliver, "outbox delivery"))]
        try:
            await stop.wait()
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            self.leadership.release()

    async def _every(self, stop: asyncio.Event, job: Callable[[], Awaitable[object]], name: str) -> None:
        """``job`` every ``worker_tick_s`` until ``stop`` is set; a job that raises is logged."""
        while not stop.is_set():
            try:
                await job()
            except Exception:
                log.exception("%s failed", name)
            try:
                await asyncio.wait_for(stop.wait(), self.settings.worker_tick_s)
            except TimeoutError:
                pass

    # jobs -------------------------------------------------------------------------------------
    def evaluate_rules(self) -> list[Finding]:
        """Evaluate the alert rules, apply findings to incidents, demote/restore providers."""
        now = self.clock.now()
        with self.engine.connect() as conn:
            firing = {_provider(k) for k in conn.execute(select(alerts.c.dedup_key).where(
                alerts.c.rule == OUTAGE, alerts.c.firing.is_(True))).scalars()}
            findings = evaluate(conn, now, self.rules, firing)
        for f in findings:
            self.incidents.observe(f)
            if f.rule == OUTAGE and f.firing is not None:
                self._fallback(f, now)
        return findings

    def _fallback(self, f: Finding, now: datetime) -> None:
        provider = f.labels["provider"]
        with begin_write(self.engine) as conn:
            if f.firing:
                changed = demote(conn, provider, now, f.title)
            else:
                changed = restore(conn, provider)
        if changed:
            log.warning("provider %s %s", provider, "demoted (fallback active)" if f.firing else "restored")

    def handle_signals(self) -> int:
        """Turn unhandled enforcement/rollout signals into incidents; returns how many."""
        now = self.clock.now()
        with self.engine.connect() as conn:
            rows = conn.execute(select(signals).where(signals.c.handled_at.is_(None),
                                                      signals.c.kind != LEDGER_VERIFY)
                                .order_by(signals.c.id)).mappings().all()
        handled = 0
        for row in rows:
            with begin_write(self.engine) as conn:
                claimed = conn.execute(update(signals).where(signals.c.id == row["id"],
                                                             signals.c.handled_at.is_(None))
                                       .values(handled_at=now)).rowcount
            if claimed:
                self._signal(row)
                handled += 1
        return handled

    def _signal(self, row: Any) -> None:
        severity = Severity(row["severity"] or "P2")
        if row["kind"] == ENFORCEMENT_FAILURE:
            op = row["subject"]
            f = Finding("budget_enforcement", {"operation": op}, True, severity, "failed",
                        f"Budget enforcement failure ({op})", row["detail"])
            self.incidents.signal(f, row["detail"])
            if op != "*":
                self._disable(op, row["detail"])
            return
        if row["kind"] in MODEL_EVENTS:
            f = Finding(row["kind"], {"target": row["subject"]}, True, severity, row["kind"],
                        f"{row['kind']}: {row['subject']}", row["detail"])
            self.incidents.signal(f, row["detail"])
            return
        f = Finding("rollout", {"rollout": row["subject"], "event": row["kind"]}, True, severity, row["kind"],
                    f"Rollout {row['subject']}: {row['kind']}", row["detail"])
        self.incidents.signal(f, row["detail"])

    def _disable(self, op: str, why: str) -> None:
        try:
            self.rollout.disable_operation(op, f"budget enforcement failure: {why}"[:500], "monitoring")
        except OpsgateError as exc:
            log.error("could not disable %s after an enforcement failure: %s", op, exc)

    def evaluate_canary(self) -> int:
        """Evaluate every active rollout, each with the unresolved P1 incidents that concern it
        (:meth:`IncidentService.open_p1`); returns decisions taken."""
        return len(self.rollout.evaluate_all(open_p1=self.incidents.open_p1))

    def verify_ledger(self) -> bool:
        """Verify the whole ledger exactly as ``opsgate ledger verify`` does (signing key and
        directory anchor included) and store the result (``hashChainIntegrity``). Fails closed: a
        ledger that cannot be verified at all, whatever the exception (an unreadable store, an
        anchor, a value nobody expected), is a failed verification too — its signal opens the P1
        ``ledger_integrity`` incident at the next rule evaluation — and the exception is logged
        (through the sanitizing log pipeline), never raised out of the tick."""
        try:
            report = verify_configured(self.settings, self.engine)
        except Exception as exc:  # fail closed: an unverifiable ledger is a failed one
            log.error("ledger verification could not run: %s", type(exc).__name__, exc_info=exc)
            record_signal(self.engine, self.clock, LEDGER_VERIFY, "ledger", ok=False,
                          detail=f"cannot verify: {type(exc).__name__}")
            return False
        failure = report.failure
        detail = f"{failure.reason} at seq {failure.seq}" if failure is not None else "ok"
        record_signal(self.engine, self.clock, LEDGER_VERIFY, "ledger", ok=report.ok,
                      detail=f"{report.entries} entries: {detail}")
        return report.ok

    def _due(self, job: str, every_s: float) -> bool:
        now = self.clock.monotonic()
        last = self._last.get(job)
        if last is not None and now - last < every_s:
            return False
        self._last[job] = now
        return True

    def _heartbeat(self) -> None:
        now = self.clock.now()
        with begin_write(self.engine) as conn:
            done = conn.execute(update(workers).where(workers.c.name == "leader").values(
                holder=self.worker_id[:128], heartbeat_at=now))
            if not done.rowcount:
                conn.execute(workers.insert().values(name="leader", holder=self.worker_id[:128],
                                                     since=now, heartbeat_at=now))


def _provider(dedup_key: str) -> str:
    return dedup_key.split("provider=", 1)[-1]
