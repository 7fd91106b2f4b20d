"""Provider availability across processes, and the outage fallback (demote / restore).

Each serving process runs a :class:`ProviderStatusSync`: every ``provider_status_interval_s`` it
writes its routers' breaker states to ``monitoring_provider_status`` (with the moment each provider
stopped being ``closed``), applies the demotions in ``monitoring_demotions`` to its router, and
probes demoted providers whose breaker admits a trial, so a recovery is noticed although a demoted
provider sees little traffic. The worker reads :func:`outages` and, past the threshold, demotes.
A graceful shutdown deletes the process's own rows (:meth:`ProviderStatusSync.withdraw`), so a
gateway started after it is judged by its own breakers; a crashed process's rows stop counting
after :data:`STALE_AFTER_S`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from opsgate.clock import Clock
from opsgate.monitoring.models import demotions, provider_status
from opsgate.providers.base import CompletionRequest
from opsgate.routing.breaker import BreakerState
from opsgate.routing.policy import RoutePolicy
from opsgate.routing.router import Router
from opsgate.store.db import begin_write

log = logging.getLogger("opsgate.monitoring")

STALE_AFTER_S = 300
"""A status row not refreshed for this long belongs to a stopped instance and is ignored."""

PROBE = CompletionRequest(
    system="Health check.", user='Answer {"ok": true}.', max_tokens=16,
    json_schema={"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
)


def outages(conn: Connection, now: datetime) -> dict[str, datetime]:
    """Providers some live instance reports as not ``closed`` (open or half-open), each with the
    earliest moment it became so; demoted providers count as out since their demotion."""
    fresh = now - timedelta(seconds=STALE_AFTER_S)
    st = provider_status.c
    rows = conn.execute(
        select(st.provider, func.min(st.unavailable_since))
        .where(st.state != BreakerState.CLOSED.value, st.updated_at >= fresh)
        .group_by(st.provider)
    ).all()
    found = {p: since or now for p, since in rows}
    for provider, since in conn.execute(select(demotions.c.provider, demotions.c.since)):
        found.setdefault(provider, since)
    return found


def recovered(conn: Connection, now: datetime, provider: str) -> bool:
    """True when at least one live instance reports ``provider`` closed and none reports it not
    closed (a demoted provider returns only after a successful call or probe)."""
    fresh = now - timedelta(seconds=STALE_AFTER_S)
    st = provider_status.c
    states = conn.execute(
        select(st.state).where(st.provider == provider, st.updated_at >= fresh)
    ).scalars().all()
    return bool(states) and all(s == BreakerState.CLOSED.value for s in states)


def demote(conn: Connection, provider: str, now: datetime, reason: str) -> bool:
    """Record a demotion (idempotent); True when it is new."""
    if conn.execute(select(demotions.c.provider).where(demotions.c.provider == provider)).first():
        return False
    conn.execute(insert(demotions).values(provider=provider, since=now, reason=reason))
    return True


def restore(conn: Connection, provider: str) -> bool:
    """Remove a demotion; True when there was one."""
    return conn.execute(delete(demotions).where(demotions.c.provider == provider)).rowcount > 0


class ProviderStatusSync:
    """Publishes one process's breaker states and applies demotions to its router.

    ``models`` gives the model to probe each provider with (its first target in ``policies``).
    """

    def __init__(
        self, engine: Engine, router: Router, clock: Clock, policies: dict[str, RoutePolicy],
        *, probe_timeout_s: float = 10.0,
    ) -> None:
        self.engine = engine
        self.router = router
        self.clock = clock
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"[:64]
        self.models = {t.provider: t.model for p in policies.values() for t in reversed(p.chain)}
        self.probe_timeout_s = probe_timeout_s
        self._since: dict[str, datetime] = {}
        self._lock = threading.Lock()  # one publish or the withdrawal at a time (worker threads)
        self._withdrawn = False

    async def sync_once(self) -> None:
        """Probe demoted providers, publish breaker states, apply the stored demotions."""
        for provider in self.router.demoted:
            if provider in self.models:
                await self.router.probe(provider, self.models[provider], PROBE, self.probe_timeout_s)
        await asyncio.to_thread(self._publish_and_apply)

    async def run(self, interval_s: float) -> None:
        """:meth:`sync_once` every ``interval_s`` seconds until cancelled; errors are logged."""
        while True:
            try:
                await self.sync_once()
            except Exception:
                log.exception("provider status sync failed")
            await asyncio.sleep(interval_s)

    async def withdraw(self) -> None:
        """Delete this instance's ``monitoring_provider_status`` rows (a graceful shutdown, after
        :meth:`run` is cancelled); a publish still running in its thread finishes first, and none
        writes afterwards. A database error is logged, not raised: the shutdown goes on, and the
        rows stop counting after :data:`STALE_AFTER_S`."""
        try:
            await asyncio.to_thread(self._withdraw)
        except Exception as exc:
            log.warning("provider status rows of %s not deleted (%s): ignored after %d s",
                        self.instance, type(exc).__name__, STALE_AFTER_S)

    def _withdraw(self) -> None:
        with self._lock:
            self._withdrawn = True
            with begin_write(self.engine) as conn:
                conn.execute(delete(provider_status).where(provider_status.c.instance == self.instance))

    def _publish_and_apply(self) -> None:
        with self._lock:
            if not self._withdrawn:
                self._publish_and_apply_locked()

    def _publish_and_apply_locked(self) -> None:
        now = self.clock.now()
        with begin_write(self.engine) as conn:
            for snap in self.router.snapshot():
                if snap.state is BreakerState.CLOSED:
                    self._since.pop(snap.provider, None)
                else:
                    self._since.setdefault(snap.provider, now)
                self._upsert(conn, snap.provider, snap.state.value, self._since.get(snap.provider), now)
            demoted = set(conn.execute(select(demotions.c.provider)).scalars())
        for provider in demoted - self.router.demoted:
            self.router.demote(provider)
        for provider in self.router.demoted - demoted:
            self.router.restore(provider)

    def _upsert(self, conn: Connection, provider: str, state: str, since: datetime | None,
                now: datetime) -> None:
        st = provider_status.c
        values = {"state": state, "unavailable_since": since, "updated_at": now}
        done = conn.execute(update(provider_status).where(
            st.instance == self.instance, st.provider == provider).values(values))
        if done.rowcount == 0:
            conn.execute(insert(provider_status).values(instance=self.instance, provider=provider, **values))
