"""Assembles one process's gateway: database, ledger, provider session, router, sandboxes.

Both ``opsgate serve`` (through the FastAPI lifespan) and ``opsgate run`` (in-process) use
:func:`start_runtime` / :meth:`Runtime.close`, so they share every code path.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass

import aiohttp
from pydantic import SecretStr
from sqlalchemy import Engine

from opsgate.clock import Clock, SystemClock
from opsgate.config import Settings
from opsgate.ledger.scheduled import Checkpointer, checkpointer_for
from opsgate.ledger.writer import Ledger
from opsgate.metering.prices import PriceTable
from opsgate.monitoring.hooks import attach as attach_alerting
from opsgate.monitoring.incidents import IncidentService
from opsgate.monitoring.providers import ProviderStatusSync
from opsgate.monitoring.security_counts import CountFlusher
from opsgate.monitoring.worker import incident_service
from opsgate.metering.service import build_metering
from opsgate.operations import OPERATIONS
from opsgate.operations.privacy import PrivacyPolicy
from opsgate.pipeline import Gateway
from opsgate.providers.http import make_session
from opsgate.providers.registry import build_providers
from opsgate.rollout.service import RolloutService
from opsgate.rollout.toggles import ToggleSnapshot
from opsgate.routing.policy import policies_for
from opsgate.routing.router import Router
from opsgate.sandbox.server import SandboxServer
from opsgate.security.auth import TokenService
from opsgate.security.sanitizer import configure_from_settings as configure_sanitizer
from opsgate.security.secrets import resolve_provider_keys
from opsgate.security.service import SecurityServices, build_security
from opsgate.store.db import open_database

log = logging.getLogger("opsgate")

SANDBOX_BANNER = (
    "*** SANDBOX MODE: providers are loopback sandboxes at {urls}. "
    "No real AI provider is called; answers are synthetic. Never use this in production. ***"
)


@dataclass
class Runtime:
    """Everything one gateway process holds open."""

    settings: Settings
    clock: Clock
    engine: Engine
    ledger: Ledger
    session: aiohttp.ClientSession
    gateway: Gateway
    tokens: TokenService
    security: SecurityServices
    rollout: RolloutService
    incidents: IncidentService
    sandbox: SandboxServer | None = None
    checkpointer: Checkpointer | None = None
    status_sync: asyncio.Task[None] | None = None
    security_counts: CountFlusher | None = None

    async def close(self) -> None:
        """Flush the security event counts, drain the ledger, close the HTTP session and the
        sandbox, dispose of the engine."""
        if self.status_sync is not None:
            self.status_sync.cancel()
        if self.checkpointer is not None:
            await self.checkpointer.stop()
        if self.security_counts is not None:
            await self.security_counts.stop()
        self.ledger.close()
        await self.session.close()
        if self.sandbox is not None:
            await self.sandbox.stop()
        self.engine.dispose()


async def start_runtime(settings: Settings, clock: Clock | None = None) -> Runtime:
    """Open the database (migrating it when ``auto_migrate``), start the ledger writer, the shared
    aiohttp session and, with ``settings.sandbox``, the in-process provider sandboxes. The
    sanitizer takes its key and phone regions from ``settings``; provider keys are read through
    the secrets layer (ledgered, ``op://`` references resolved) before the providers are built."""
    clock = clock or SystemClock()
    configure_sanitizer(settings)
    privacy = PrivacyPolicy.from_settings(settings)
    sandbox = None
    if settings.sandbox:
        sandbox = SandboxServer(faults=settings.sandbox_faults)
        await sandbox.start()
        settings = sandbox_settings(settings, sandbox.base_urls)
        log.warning(SANDBOX_BANNER.format(urls=", ".join(sandbox.base_urls.values())))
    engine = open_database(settings)
    ledger = Ledger(engine, clock)
    ledger.start()
    session = make_session()
    settings = await resolve_provider_keys(settings, ledger, clock, session)
    router = Router(
        build_providers(settings, session),
        clock,
        failure_threshold=settings.breaker_failure_threshold,
        cooldown_s=settings.breaker_cooldown_s,
    )
    tokens = TokenService(settings, clock)
    policies, prices = policies_for(settings), PriceTable.load()
    routed = [t.model for p in policies.values() for t in p.chain]
    toggles = ToggleSnapshot(engine, clock)
    rollout = RolloutService(engine, ledger, clock, toggles)
    rollout.ensure_toggles(OPERATIONS)
    if settings.sandbox:
        rollout.enable_for_sandbox()
    gateway = Gateway(
        tokens=tokens,
        ledger=ledger,
        router=router,
        policies=policies,
        prices=prices,
        clock=clock,
        metering=build_metering(settings, engine, clock, prices, routed),
        toggles=toggles,
        privacy=privacy,
    )
    attach_alerting(engine, clock, gateway.metering.hooks if gateway.metering else None, rollout)
    checkpointer = checkpointer_for(settings, engine, clock, session)
    if checkpointer is not None:
        checkpointer.start()
    status_sync = asyncio.create_task(
        ProviderStatusSync(engine, router, clock, policies).run(settings.provider_status_interval_s)
    )
    security_counts = CountFlusher(engine, clock)
    security_counts.start()
    return Runtime(
        settings, clock, engine, ledger, session, gateway, tokens, build_security(settings, clock, engine), rollout,
        incident_service(settings, engine, ledger, clock, session), sandbox, checkpointer, status_sync,
        security_counts,
    )


def sandbox_settings(settings: Settings, base_urls: dict[str, str]) -> Settings:
    """Point every provider at its sandbox; missing keys get generated keys of the provider's shape."""
    return settings.model_copy(
        update={
            "anthropic_base_url": base_urls["anthropic"],
            "deepseek_base_url": base_urls["deepseek"],
            "gemini_base_url": base_urls["gemini"],
            "anthropic_api_key": settings.anthropic_api_key or _fake("sk-ant-api03-"),
            "deepseek_api_key": settings.deepseek_api_key or _fake("sk-"),
            "gemini_api_key": settings.gemini_api_key or _fake("AIza"),
        }
    )


def _fake(prefix: str) -> SecretStr:
    return SecretStr(prefix + secrets.token_urlsafe(32))
