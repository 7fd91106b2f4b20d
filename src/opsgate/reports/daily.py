"""Sending the daily security report through the alert channels (the monitoring worker's job).

:func:`queue_daily_security_report` builds the report of the previous UTC day and stores it in
the notification outbox (``monitoring_outbox``) for the team channels — Discord and email, never
the paging channels (PagerDuty, SMS): a report is information, not an alarm. The outbox's unique
(channel, recipient, notify_key) with ``notify_key = "security-report:<date>"`` makes the job
idempotent: any number of workers may call it any number of times a day, each report is queued
once, and the worker's outbox dispatch delivers it with its retries.

The worker schedules it by calling it on a cadence (hourly is plenty), e.g. in ``Worker.tick``::

    if self._due("security_report", 3600):
        await asyncio.to_thread(queue_daily_security_report, self.engine, self.settings,
                                self.clock, self.notifiers, self.contacts)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from opsgate.clock import Clock
from opsgate.config import Settings
from opsgate.monitoring.escalation import Contacts
from opsgate.monitoring.models import outbox
from opsgate.monitoring.notifiers import Notification, Notifier
from opsgate.monitoring.outbox import outbox_rows
from opsgate.reports.render import to_markdown
from opsgate.reports.security import build_security_report
from opsgate.store.db import begin_write

REPORT_CHANNELS = ("discord", "email")
SEVERITY = "INFO"


def queue_daily_security_report(
    engine: Engine,
    settings: Settings,
    clock: Clock,
    notifiers: Mapping[str, Notifier],
    contacts: Contacts,
) -> int:
    """Queue yesterday's (UTC, by ``clock``) report for every configured team channel; returns
    the outbox rows added (0 when already queued or no team channel is configured)."""
    now = clock.now()
    day = (now - timedelta(days=1)).date()
    key = f"security-report:{day.isoformat()}"
    targets = [
        (c, r)
        for c in REPORT_CHANNELS
        if c in notifiers
        for r in contacts.recipients(c)
        if r or c == "discord"
    ]
    if not targets or _queued(engine, key):
        return 0
    report = build_security_report(engine, settings, day, now)
    note = Notification(
        "report",
        "-",
        key,
        SEVERITY,
        f"Daily security report {day.isoformat()}",
        to_markdown(report),
        now.isoformat(),
        {"not_available": ", ".join(report["not_available"])},
    )
    rows = outbox_rows(notifiers, note, targets, key, now)
    try:
        with begin_write(engine) as conn:
            conn.execute(insert(outbox), rows)
    except IntegrityError:  # another worker queued it first
        return 0
    return len(rows)


def _queued(engine: Engine, key: str) -> bool:
    with engine.connect() as conn:
        return (
            conn.execute(
                select(outbox.c.id).where(outbox.c.notify_key.startswith(key)).limit(1)
            ).first()
            is not None
        )
