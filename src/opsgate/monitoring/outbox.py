"""The durable notification outbox (transactional outbox pattern).

A notification is rendered into wire payloads and stored (``monitoring_outbox``) in the same
transaction as the incident change that caused it, before any send. :meth:`Outbox.dispatch_once`
then delivers due rows (the worker runs it in its own delivery loop, one per channel, apart from
the rules and the canary evaluation, so a slow receiver never delays them):

- **claiming**: PostgreSQL ``SELECT ... FOR UPDATE SKIP LOCKED`` then an UPDATE to ``sending``
  in one transaction; SQLite a conditional ``UPDATE ... WHERE id = ? AND <still due>`` whose
  rowcount says who won. A claim lasts ``claim_s``; a worker that died mid-send leaves a claim that
  expires and is taken again (nothing is lost across a restart). The claim counts the attempt
  (``attempts + 1``, committed before the send), so ``attempts`` is the number of sends tried,
  a send cut off by a crash included (a claim that sends nothing, a stale row, gives it back). Two workers never hold one row,
  and the unique (channel, recipient, notify_key) means one event is stored once, so a dedup key
  and state are sent once.
- **order**: rows of one incident to one (channel, recipient) go out in the order they were
  stored: a row is not due while an earlier one of the same stream is pending or being sent, so a
  resolve never overtakes its rate-limited trigger (it is claimed once the trigger is out).
- **concurrency**: the rows of one claim are sent together, at most ``per_channel`` at a time on
  each channel. A claim holds at most one row per stream (the rule above), so sending them
  together never reorders a stream.
- **deadline**: every send has ``send_timeout_s``; a receiver that accepts and never answers is a
  retryable failure, never a frozen worker.
- **retry**: 429 waits ``max(Retry-After, backoff)``; 5xx and network errors back off
  exponentially (1, 2, 4, ... s, at most ``max_backoff_s``); a row still failing ``give_up_s``
  after it was stored fails for good. A receiver's Retry-After is untrusted input: it is capped at
  ``max_retry_after_s``.
- **stale**: an escalation or repeat whose incident is no longer open when its turn comes is
  ``cancelled``, not sent (an acknowledgement stops what was queued for retry too).
- **permanent failure** (4xx other than 429, SMTP 5xx, or giving up): the row is ``failed`` with
  its status and error, the incident's timeline records it, and a ``delivery_failure``
  notification goes out through the first other configured channel.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, exists, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from opsgate.clock import Clock
from opsgate.monitoring.models import incident_events, incidents, outbox
from opsgate.monitoring.notifiers import DeliveryError, Notification, Notifier
from opsgate.store.db import begin_write

log = logging.getLogger("opsgate.monitoring")

CHANNEL_ORDER = ("discord", "email", "pagerduty", "sms")
"""Every channel a row can name, in the order a delivery-failure notice picks another one."""
PENDING, SENDING, SENT, FAILED, CANCELLED = "pending", "sending", "sent", "failed", "cancelled"
STOPPED_WHEN_NOT_OPEN = ("escalate", "repeat")
"""Notification events (the second field of a notify key ``<incident>:<event>:...``) that are only
worth sending while their incident is still open."""

Recipients = Callable[[str], list[str]]


def outbox_rows(notifiers: Mapping[str, Notifier], note: Notification, targets: list[tuple[str, str]],
                notify_key: str, now: datetime) -> list[dict[str, Any]]:
    """Rows to insert for ``note`` to every (channel, recipient) of ``targets``; a payload split
    in parts (Discord) gets ``#i/n`` appended to its notify key."""
    rows = []
    for channel, recipient in targets:
        payloads = notifiers[channel].render(note, recipient)
        for i, payload in enumerate(payloads, 1):
            key = notify_key if len(payloads) == 1 else f"{notify_key}#{i}/{len(payloads)}"
            rows.append({
                "notify_key": key[:255], "channel": channel, "recipient": recipient,
                "incident_id": note.incident_id, "payload": json.dumps(payload), "state": PENDING,
                "attempts": 0, "next_attempt_at": now, "created_at": now,
            })
    return rows


class Outbox:
    """Delivers stored notifications through ``notifiers`` (by channel name).

    ``fallback_recipient(channel)`` names who gets a delivery-failure notice on that channel
    (empty string for webhook channels). Times come from ``clock``; ``worker_id`` marks claims;
    ``per_channel`` bounds the sends in flight on one channel.
    """

    def __init__(self, engine: Engine, clock: Clock, notifiers: Mapping[str, Notifier], worker_id: str,
                 fallback_recipients: Recipients, *, max_backoff_s: float = 300.0,
                 give_up_s: float = 86400.0, claim_s: float = 120.0, send_timeout_s: float = 30.0,
                 max_retry_after_s: float = 3600.0, per_channel: int = 4) -> None:
        self.engine = engine
        self.clock = clock
        self.notifiers = dict(notifiers)
        self.worker_id = worker_id[:64]
        self.fallback_recipients = fallback_recipients
        self.max_backoff_s = max_backoff_s
        self.give_up_s = give_up_s
        self.claim_s = claim_s
        self.send_timeout_s = send_timeout_s
        self.max_retry_after_s = max_retry_after_s
        self.per_channel = per_channel

    @property
    def channels(self) -> tuple[str, ...]:
        """Every channel a row may name: :data:`CHANNEL_ORDER` and any other configured one."""
        return tuple(dict.fromkeys((*CHANNEL_ORDER, *self.notifiers)))

    def claim(self, limit: int = 50, channel: str | None = None) -> list[dict[str, Any]]:
        """Claim up to ``limit`` due rows (of ``channel`` only, when given) for this worker (see
        the module docstring), counting the attempt each is claimed for: the rows come back with
        ``attempts`` already incremented, durably before any send. SQLite takes them with one ``UPDATE ... RETURNING``, which holds
        the write lock from its first step (a read followed by a write would fail with "database
        is locked" under load)."""
        now = self.clock.now()
        earlier = outbox.alias("earlier")
        blocked = exists().where(
            earlier.c.incident_id == outbox.c.incident_id, earlier.c.channel == outbox.c.channel,
            earlier.c.recipient == outbox.c.recipient, earlier.c.id < outbox.c.id,
            earlier.c.state.in_((PENDING, SENDING)))
        due = and_(or_(and_(outbox.c.state == PENDING, outbox.c.next_attempt_at <= now),
                       and_(outbox.c.state == SENDING, outbox.c.claim_expires_at <= now)), ~blocked)
        if channel is not None:
            due = and_(due, outbox.c.channel == channel)
        claim = {"state": SENDING, "claimed_by": self.worker_id, "attempts": outbox.c.attempts + 1,
                 "claim_expires_at": now + timedelta(seconds=self.claim_s)}
        query = select(outbox.c.id).where(due).order_by(outbox.c.id).limit(limit)
        with begin_write(self.engine) as conn:
            if conn.dialect.name == "postgresql":
                ids = list(conn.execute(query.with_for_update(of=outbox, skip_locked=True)).scalars())
                conn.execute(update(outbox).where(outbox.c.id.in_(ids)).values(claim))
            else:
                ids = list(conn.execute(update(outbox).where(outbox.c.id.in_(query.scalar_subquery()))
                                        .values(claim).returning(outbox.c.id)).scalars())
            return [dict(r) for r in conn.execute(select(outbox).where(outbox.c.id.in_(ids))
                                                  .order_by(outbox.c.id)).mappings()]

    async def dispatch_once(self, limit: int = 50, channel: str | None = None) -> int:
        """Claim due rows (of ``channel`` only, when given) and send them, at most
        ``per_channel`` at a time on each channel, claiming again while a round finished rows (a
        finished row makes the next one of its stream due); returns how many were sent. At most
        ``limit`` rows are handled."""
        sent = handled = 0
        while handled < limit and (batch := self.claim(limit - handled, channel)):
            handled += len(batch)
            outcomes = await self._send_all(batch)
            sent += outcomes.count(SENT)
            if not any(o in (SENT, CANCELLED) for o in outcomes):
                break
        return sent

    async def _send_all(self, batch: list[dict[str, Any]]) -> list[str]:
        """Deliver ``batch`` (one claim: at most one row per stream), ``per_channel`` at a time on
        each channel; the new states in ``batch``'s order."""
        gates = {row["channel"]: asyncio.Semaphore(self.per_channel) for row in batch}

        async def bounded(row: dict[str, Any]) -> str:
            async with gates[row["channel"]]:
                return await self._deliver(row)

        return list(await asyncio.gather(*(bounded(row) for row in batch)))

    async def _deliver(self, row: dict[str, Any]) -> str:
        """Send one claimed row (its attempt already counted by :meth:`claim`); returns its new state."""
        if self._stale(row):  # nothing is sent: the claim's count is given back
            self._finish(row, {"state": CANCELLED, "attempts": row["attempts"] - 1})
            return CANCELLED
        notifier = self.notifiers.get(row["channel"])
        try:
            if notifier is None:
                raise DeliveryError(f"channel {row['channel']} is not configured", permanent=True)
            async with asyncio.timeout(self.send_timeout_s):
                await notifier.send(json.loads(row["payload"]))
        except TimeoutError:
            return self._failed_attempt(row, DeliveryError(f"no answer within {self.send_timeout_s:g} s"))
        except DeliveryError as exc:
            return self._failed_attempt(row, exc)
        except Exception as exc:  # a bug in a notifier must not stop the others
            log.exception("notifier %s raised", row["channel"])
            return self._failed_attempt(row, DeliveryError(type(exc).__name__))
        self._finish(row, {"state": SENT, "sent_at": self.clock.now(), "last_status": None})
        return SENT

    def _failed_attempt(self, row: dict[str, Any], exc: DeliveryError) -> str:
        """Record a failed send: ``failed`` for good or ``pending`` until its next attempt (the
        ``attempts``-th, counted when claimed, decides the backoff)."""
        now = self.clock.now()
        attempts = row["attempts"]
        values = {"attempts": attempts, "last_status": exc.status, "last_error": exc.detail[:1000]}
        given_up = now - row["created_at"] >= timedelta(seconds=self.give_up_s)
        if exc.permanent or given_up:
            self._finish(row, {**values, "state": FAILED}, lambda conn: self._report(conn, row, exc))
            return FAILED
        wait = min(self.max_backoff_s, 2.0 ** (attempts - 1))
        if exc.retry_after is not None:
            wait = min(max(wait, exc.retry_after), self.max_retry_after_s)
        self._finish(row, {**values, "state": PENDING, "next_attempt_at": now + timedelta(seconds=wait)})
        return PENDING

    def _stale(self, row: dict[str, Any]) -> bool:
        """An escalation or repeat whose incident has been acknowledged or resolved meanwhile."""
        parts = row["notify_key"].split(":")
        if not row["incident_id"] or len(parts) < 2 or parts[1] not in STOPPED_WHEN_NOT_OPEN:
            return False
        with self.engine.connect() as conn:
            state = conn.execute(select(incidents.c.state).where(incidents.c.id == row["incident_id"])).scalar()
        return state is not None and state != "open"

    def _finish(self, row: dict[str, Any], values: dict[str, Any],
                also: Callable[[Connection], None] | None = None) -> None:
        """Record the outcome, only if this worker still holds the claim."""
        with begin_write(self.engine) as conn:
            done = conn.execute(update(outbox).where(
                outbox.c.id == row["id"], outbox.c.state == SENDING, outbox.c.claimed_by == self.worker_id,
            ).values({**values, "claimed_by": None, "claim_expires_at": None}))
            if done.rowcount and also is not None:
                also(conn)

    def _report(self, conn: Connection, row: dict[str, Any], exc: DeliveryError) -> None:
        """Timeline entry and a delivery-failure notice on another channel."""
        now = self.clock.now()
        detail = f"{row['channel']} to {row['recipient'] or 'webhook'} failed for good: {exc.detail}"
        if row["incident_id"]:
            conn.execute(insert(incident_events).values(
                incident_id=row["incident_id"], at=now, kind="delivery_failed", actor="outbox",
                detail=detail[:2000]))
        other = next((c for c in CHANNEL_ORDER if c in self.notifiers and c != row["channel"]
                      and (c in ("discord", "pagerduty") or self.fallback_recipients(c))), None)
        if other is None:
            log.error("notification %s failed and no other channel is configured: %s", row["id"], detail)
            return
        note = Notification("delivery_failure", row["incident_id"] or "-", f"outbox:{row['id']}", "P2",
                            f"Notification delivery failed ({row['channel']})", detail, now.isoformat())
        recipients = self.fallback_recipients(other) or [""]
        targets = [(other, r) for r in recipients]
        try:
            with conn.begin_nested():
                conn.execute(insert(outbox), outbox_rows(self.notifiers, note, targets,
                                                         f"delivery_failure:{row['id']}", now))
        except IntegrityError:  # already reported
            pass
