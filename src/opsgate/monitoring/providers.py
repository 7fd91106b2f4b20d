"""Provider availability across processes, and the outage fallback (demote / restore).

Each serving process runs a :class:`ProviderStatusSync`: every ``provider_status_interval_s`` it
writes its routers' breaker states to ``monitoring_provider_status`` (with the moment each provider
stopped being ``closed``), applies the demotions in ``monitoring_demotions`` to its router, and
probes demoted providers whose breaker admits a trial, so a recovery is noticed although a demoted
provider sees little traffic. The worker reads :func:`outages` and, past the threshold, demotes.
A graceful shutdown deletes the process's own rows (:meth:`ProviderStatusSync.withdraw`), so a
gateway started after it is judged by its own breakers; a crashed process's rows stop counting
after :data:`STALE_AFTER_S`. The rows are also each gateway's presence in the database
(:func:`live_instances`): a gateway counting its rate limits in memory warns at start-up when
another one is live (:func:`shared_database_limits_problem`).
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
from opsgate.config import Settings
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


def live_instances(engine: Engine, now: datetime, within_s: float) -> dict[str, datetime]:
    """``instance -> last heartbeat`` of every serving process whose status rows were refreshed
    within ``within_s`` seconds of ``now``: each gateway writes them at start and every
    ``provider_status_interval_s`` (:class:`ProviderStatusSync`, a timer, never per call) and
    deletes them on a graceful shutdown, so they double as its presence in the database."""
    st = provider_status.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(st.instance, func.max(st.updated_at))
            .where(st.updated_at >= now - timedelta(seconds=within_s)).group_by(st.instance)
        ).all()
    return {instance: at for instance, at in rows}


def per_process_limits(settings: Settings) -> bool:
    """True when ``settings`` set a rate limit without ``OPSGATE_REDIS_URL``: each process then
    counts the limits in its own memory (:mod:`opsgate.metering.ratelimit`)."""
    return not settings.redis_url and any((
        settings.rate_limit_user_rpm, settings.rate_limit_user_tpm,
        settings.rate_limit_user_operation_rpm, settings.rate_limit_user_operation_tpm))


def shared_database_limits_problem(settings: Settings, engine: Engine, now: datetime,
                                   exclude: str | None = None) -> str | None:
    """The warning when the rate limits of ``settings`` are counted per process
    (:func:`per_process_limits`) while more than one gateway is live on the same database
    (:func:`live_instances` within 3 x ``provider_status_interval_s``): every gateway admits each
    limit, so N gateways admit N x each limit (tester-crash F5). ``exclude`` is the calling
    gateway's own instance (it counts as one live gateway, whether its rows are written yet or
    not); without it (``opsgate readiness``, no gateway itself) two live instances are needed.
    ``None`` when there is nothing to warn about. Refusing would break a rolling restart, so
    :func:`opsgate.runtime.start_runtime` logs it and ``opsgate readiness`` fails its rate-limit
    item with it."""
    if not per_process_limits(settings):
        return None
    live = set(live_instances(engine, now, 3 * settings.provider_status_interval_s))
    if exclude is not None:
        live.add(exclude)
    if len(live) < 2:
        return None
    return (f"{len(live)} gateways are live on this database ({', '.join(sorted(live))}) and the rate "
            f"limits are counted per process without OPSGATE_REDIS_URL: each gateway admits each "
            f"limit, {len(live)}x in all; set OPSGATE_REDIS_URL to share them")


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
