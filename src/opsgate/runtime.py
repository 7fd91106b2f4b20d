"""The composition root: every long-lived service of one process, built once, under an exit stack.

:func:`open_services` builds what commands and the gateway share (database, ledger writer,
toggles and rollouts, incidents with their notifiers and contacts) onto an exit stack the caller
owns; :func:`cli_services` is that for one CLI command. :func:`start_runtime` adds what serving
needs (sandboxes, the shared aiohttp session, provider keys, router, metering, security services,
pipeline, checkpointer, provider status sync, reservation expiry timer, security-count flusher) on an
:class:`~contextlib.AsyncExitStack` the :class:`Runtime` keeps: each step that opens something
registers how to close it as it goes, so a step that raises closes what was already open (ledger
writer thread, sandbox, session, engine) in reverse order, and :meth:`Runtime.close` closes
everything the same way. ``opsgate serve`` (through the FastAPI lifespan), ``opsgate run`` and the
readiness probe use :func:`start_runtime`, so they share every code path.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from dataclasses import dataclass

import aiohttp
from pydantic import SecretStr
from sqlalchemy import Engine

from opsgate import tracing
from opsgate.clock import Clock, ManualClock, SystemClock
from opsgate.config import Settings
from opsgate.ledger.recovery import recover
from opsgate.ledger.scheduled import Checkpointer, checkpointer_for
from opsgate.ledger.writer import Ledger
from opsgate.metering.prices import PriceBook
from opsgate.metering.reservations import release_interrupted
from opsgate.metering.served import learn_served_models
from opsgate.metering.service import MeteringService, build_metering
from opsgate.metering.signins import SignInThrottle, build_sign_in_throttle
from opsgate.metering.worstcase import prompt_token_bound
from opsgate.monitoring.hooks import attach as attach_alerting
from opsgate.monitoring.incidents import IncidentService
from opsgate.monitoring.prometheus import observe_attempt, observe_charges, observe_count
from opsgate.monitoring.providers import ProviderStatusSync, shared_database_limits_problem
from opsgate.security.counts import CountFlusher
from opsgate.monitoring.worker import incident_service
from opsgate.operations import OPERATIONS
from opsgate.operations.privacy import PrivacyPolicy
from opsgate.pipeline import Gateway
from opsgate.providers.http import make_session
from opsgate.providers.registry import build_providers
from opsgate.rollout.service import RolloutService
from opsgate.rollout.controller import Thresholds
from opsgate.rollout.toggles import ToggleSnapshot
from opsgate.rollout.variants import checked_variants
from opsgate.routing.effective import checked_routes, routing_record
from opsgate.routing.router import Router
from opsgate.routing.windows import ContextWindows
from opsgate.sandbox.latency import LatencyModel, spending_trace
from opsgate.sandbox.server import SandboxServer
from opsgate.security.auth import TokenService
from opsgate.security.sanitizer import configure_from_settings as configure_sanitizer
from opsgate.security.secrets import has_references, resolve_secrets, secret_problems
from opsgate.security.service import SecurityServices, build_security
from opsgate.store.db import open_database

log = logging.getLogger("opsgate")

SANDBOX_BANNER = (
    "*** SANDBOX MODE: providers are loopback sandboxes at {urls}. "
    "No real AI provider is called; answers are synthetic. Never use this in production. ***"
)


@dataclass(frozen=True, slots=True)
class Services:
    """What every command and the gateway share, over one database."""

    settings: Settings
    clock: Clock
    engine: Engine
    ledger: Ledger
    toggles: ToggleSnapshot
    rollout: RolloutService
    incidents: IncidentService


@dataclass(frozen=True, slots=True)
class Runtime(Services):
    """Everything one gateway process holds open (``settings`` with the provider keys and every
    ``op://`` reference resolved)."""

    session: aiohttp.ClientSession
    router: Router
    metering: MeteringService | None
    gateway: Gateway
    tokens: TokenService
    security: SecurityServices
    sign_ins: SignInThrottle
    sandbox: SandboxServer | None
    checkpointer: Checkpointer | None
    security_counts: CountFlusher
    exits: AsyncExitStack

    async def close(self) -> None:
        """Close everything :func:`start_runtime` opened, newest first: flush the security event
        counts and the traces, stop the status sync (deleting this process's provider status rows)
        and the checkpointer, drain the shadow calls (up to 5 s, then cancelled), try the pending
        call results once more (those still refused are logged), end the gateway's
        prepare threads, drain the ledger, dispose of the engine, close the HTTP session and the
        sandbox. Idempotent."""
        await self.exits.aclose()


async def open_services(
    stack: ExitStack | AsyncExitStack, settings: Settings, clock: Clock, session: aiohttp.ClientSession | None,
    *, provider_keys: bool = False,
) -> Services:
    """Open the database (migrating it when ``auto_migrate``) and start the ledger writer, both
    closed by ``stack``; read the secrets through the secrets layer
    (:func:`~opsgate.security.secrets.resolve_secrets`: every ``op://`` reference of a secret
    setting resolved, and the provider keys with ``provider_keys``; ``ConfigError`` when one
    cannot be); build toggles, rollouts and incidents over them. ``Services.settings`` holds the
    resolved values. The rollouts' alert events (``rollout.rolled_back``, ``rollout.escalated``)
    become monitoring signals here, so a rollback from the CLI, the API or the worker opens the
    same incident and sends the same notifications. Without ``session`` (a CLI command) the
    incident notifiers only render: the worker sends the outbox."""
    engine, ledger = _open_store(stack, settings, clock)
    settings = await resolve_secrets(settings, ledger, clock, session, provider_keys=provider_keys)
    return _services(settings, clock, engine, ledger, session)


def _open_store(stack: ExitStack | AsyncExitStack, settings: Settings, clock: Clock) -> tuple[Engine, Ledger]:
    engine = open_database(settings)
    stack.callback(engine.dispose)
    return engine, stack.enter_context(Ledger(engine, clock))


def _services(settings: Settings, clock: Clock, engine: Engine, ledger: Ledger,
              session: aiohttp.ClientSession | None) -> Services:
    toggles = ToggleSnapshot(engine, clock)
    rollout = RolloutService(engine, ledger, clock, toggles, Thresholds.from_settings(settings))
    attach_alerting(engine, clock, None, rollout)
    return Services(settings, clock, engine, ledger, toggles, rollout,
                    incident_service(settings, engine, ledger, clock, session))


@contextmanager
def cli_services(settings: Settings | None = None, clock: Clock | None = None) -> Iterator[Services]:
    """``with cli_services() as services:`` the :class:`Services` of one CLI command, from
    ``settings`` (default: the environment), closed when the block ends; as :func:`open_services`
    (without the provider keys), the ``op://`` references resolved with ``asyncio.run``, so a
    command whose settings hold one calls it outside an event loop."""
    settings, clock = settings or Settings(), clock or SystemClock()
    with ExitStack() as stack:
        engine, ledger = _open_store(stack, settings, clock)
        if settings.references():
            settings = asyncio.run(resolve_secrets(settings, ledger, clock, None, provider_keys=False))
        yield _services(settings, clock, engine, ledger, None)


async def recover_interrupted(engine: Engine, ledger: Ledger, clock: Clock, older_than_s: float) -> list[str]:
    """``opsgate ledger recover``: :func:`~opsgate.ledger.recovery.recover` with each closed
    intent's open budget reservation released in the same transaction, charged its worst case
    (:func:`~opsgate.metering.reservations.release_interrupted`). Returns the request ids closed."""
    return await recover(engine, ledger, clock, older_than_s,
                         release=lambda conn, request_id: release_interrupted(conn, clock, request_id))


def unresolvable_secrets(settings: Settings, clock: Clock | None = None) -> list[str]:
    """One line per secret of ``settings`` that start-up could not read
    (:func:`~opsgate.security.secrets.secret_problems`: an ``op://`` reference without Connect or
    that Connect cannot resolve, a resolved value that breaks its setting's rule), read as
    start-up reads them, ledgered (actor ``opsgate-cli``) on the database's ledger; ``[]``
    without opening anything when no secret is a reference. For ``opsgate config check``; call
    it outside an event loop."""
    if not has_references(settings):
        return []
    clock = clock or SystemClock()
    with ExitStack() as stack:
        _, ledger = _open_store(stack, settings, clock)
        return asyncio.run(secret_problems(settings, ledger, clock, actor="opsgate-cli"))


async def start_runtime(settings: Settings, clock: Clock | None = None) -> Runtime:
    """Open every service of a gateway process (see the module docstring); with
    ``settings.sandbox`` the in-process provider sandboxes first. The sanitizer takes its key and
    phone regions from ``settings``; provider keys and every secret setting's ``op://`` reference are
    read through the secrets layer (ledgered, :func:`open_services`) before anything uses them. Whatever raises half-way, what
    was already open is closed before the error propagates. A routing configuration that cannot
    be served raises :class:`~opsgate.routing.policy.RouteConfigError` before anything is opened;
    the effective routing configuration and its digest are appended to the ledger."""
    stack = AsyncExitStack()
    try:
        return await _open(stack, settings, clock or SystemClock())
    except BaseException:
        await stack.aclose()
        raise


async def _open(stack: AsyncExitStack, settings: Settings, clock: Clock) -> Runtime:
    configure_sanitizer(settings)
    privacy = PrivacyPolicy.from_settings(settings)
    prices = PriceBook.from_settings(settings, clock.now)
    policies = checked_routes(settings, prices, clock.now())  # refuses before anything is opened
    variants = checked_variants(settings, policies, prices, clock.now())
    sandbox = None
    latency = simulated_latency(settings, clock)
    if settings.sandbox:
        sandbox = await stack.enter_async_context(SandboxServer(faults=settings.sandbox_faults, latency=latency))
        settings = sandbox_settings(settings, sandbox.base_urls)
        log.warning(SANDBOX_BANNER.format(urls=", ".join(sandbox.base_urls.values())))
    traces = [spending_trace(clock)] if latency is not None and isinstance(clock, ManualClock) else None
    session = make_session(trace_configs=traces)
    stack.push_async_callback(session.close)
    shared = await open_services(stack, settings, clock, session, provider_keys=True)
    settings, engine, ledger, rollout = shared.settings, shared.engine, shared.ledger, shared.rollout
    rollout.variants = variants
    router = Router(build_providers(settings, session), clock, observer=observe_attempt,
                    failure_threshold=settings.breaker_failure_threshold, cooldown_s=settings.breaker_cooldown_s,
                    max_cooldown_s=settings.breaker_max_cooldown_s,
                    windows=ContextWindows.from_settings(settings, prompt_token_bound, prices),
                    targets=variants.targets())
    security = build_security(settings, clock, engine)
    await asyncio.to_thread(security.keyring.check)  # KeyRingError: the master key does not unwrap the ring
    revocations = asyncio.create_task(security.revoked.run())
    stack.push_async_callback(_cancel, revocations)
    tokens = TokenService(settings, clock, security.revoked)
    routed = variants.chains()
    metering = build_metering(settings, engine, clock, prices, routed)
    learn_served_models(engine, prices)  # reservations cover what targets were seen to serve
    expiry = asyncio.create_task(metering.expire_every(), name=EXPIRY_TASK)  # stale holds released while serving
    stack.push_async_callback(_cancel, expiry)
    rollout.ensure_toggles(OPERATIONS)
    if settings.sandbox:
        rollout.enable_for_sandbox()
    gateway = Gateway(tokens=tokens, ledger=ledger, router=router, policies=policies, prices=prices, clock=clock,
                      metering=metering, toggles=shared.toggles, privacy=privacy, variants=variants,
                      count_timeout_s=settings.token_count_timeout_s, count_observer=observe_count,
                      charge_observer=observe_charges)
    stack.callback(gateway.close_prepare_pool)
    stack.push_async_callback(gateway.drain_pending)  # after the shadow calls, before the ledger closes
    stack.push_async_callback(gateway.drain_shadows)  # before the ledger and the engine close
    attach_alerting(engine, clock, metering.hooks if metering else None, None, gateway.models)  # rollout: open_services
    await ledger.append("routing_config", routing_record(settings, prices, clock.now()))
    checkpointer = checkpointer_for(settings, engine, clock, session)
    if checkpointer is not None:
        await stack.enter_async_context(checkpointer)
    status = ProviderStatusSync(engine, router, clock, policies)
    shared_limits = await asyncio.to_thread(shared_database_limits_problem, settings, engine, clock.now(),
                                            status.instance)
    if shared_limits is not None:  # a warning, not a refusal: a rolling restart has two for a while
        log.warning("rate limits: %s", shared_limits)
    status_sync = asyncio.create_task(status.run(settings.provider_status_interval_s))
    stack.push_async_callback(status.withdraw)  # after the task's cancel (newest first), before the engine's dispose
    stack.push_async_callback(_cancel, status_sync)
    counts = await stack.enter_async_context(CountFlusher(engine, clock))
    if tracing.configure():  # OTLP traces when the OTEL_* variables ask for them
        stack.callback(tracing.shutdown)
    return Runtime(settings, clock, engine, ledger, shared.toggles, rollout, shared.incidents, session, router,
                   metering, gateway, tokens, security, build_sign_in_throttle(settings), sandbox, checkpointer,
                   counts, stack)


EXPIRY_TASK = "opsgate-reservation-expiry"
"""The name of the gateway's reservation expiry timer task (:meth:`MeteringService.expire_every`)."""


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def simulated_latency(settings: Settings, clock: Clock) -> LatencyModel | None:
    """The sandboxes' seeded latency model (``sandbox_latency_seed``, :mod:`opsgate.sandbox.latency`),
    spent on ``clock``; None without the seed. Raises ``ValueError`` when the seed is set but
    the sandboxes are off or ``clock`` is not a :class:`ManualClock` (a real clock has real latency)."""
    seed = settings.sandbox_latency_seed
    if seed is None:
        return None
    if not settings.sandbox or not isinstance(clock, ManualClock):
        raise ValueError("sandbox_latency_seed needs the sandboxes and a rehearsal's simulated clock")
    return LatencyModel(seed)


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
