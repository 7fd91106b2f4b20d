"""Runs one rehearsal: the gateway in-process on a shared :class:`ManualClock`, synthetic users over
real HTTP (aiohttp), the monitoring worker's jobs and the canary controller on the seed's cadence.

Order of one evaluation window (5/10/15 simulated minutes by phase): read the toggles over the admin
API; split the window's calls into chunks spread over it; per chunk advance the clock, switch the
scenario's faults, let first-time users opt in or out (``PUT /v1/me/settings``), send the calls (the
first alone, so a half-open breaker's trial is not raced, then up to ``concurrency`` at once; by
default one after another, see below); at the
window's end run the worker's jobs (signals -> incidents, alert rules, escalations, the outbox to
the loopback receivers) and ``RolloutService.evaluate_all`` with the P1 incidents that concern each rollout, exactly as
``opsgate worker`` does. The clock only moves while no request is in flight, so every row of
``ai_operation_log`` gets a reproducible time. The sandboxes answer at once with a seeded simulated
latency (:mod:`opsgate.sandbox.latency`, seed = the run's) that each request spends on the clock, so
the latencies the gateway records and the controller compares are the same in every run of a seed,
however loaded the machine is. The sandboxes decide faults and latencies by each provider's arrival
count, so calls sent concurrently would swap them between runs: which call gets the ``schema``
fault's repair request (a second exchange, a second latency draw) and which draws add up in one
call would change, and with them a cohort's p99. Hence ``concurrency`` 1 by default: every call of
a seed gets the same faults and latency in every run.

A variant scenario (:class:`~opsgate.rehearsal.scenarios.Candidate`) configures the candidate
variant (route, price, prompt version in the run's ``prompts_dir``), starts a variant rollout of
its one operation over the admin API, and sends all traffic to that operation.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
from fastapi import FastAPI

from opsgate.app import open_app
from opsgate.clock import ManualClock
from opsgate.config import PriceConfig, Settings, VariantConfig
from opsgate.ledger.verify import verify
from opsgate.localserver import serve_in_thread
from opsgate.monitoring.worker import Worker
from opsgate.operations import OPERATIONS
from opsgate.operations.io import input_from_file
from opsgate.providers.http import make_session
from opsgate.rehearsal.facts import log_facts
from opsgate.rehearsal.receivers import DISCORD_PATH, PAGERDUTY_PATH, AlertReceiver
from opsgate.rehearsal.report import build_report
from opsgate.rehearsal.scenarios import Scenario, get_scenario
from opsgate.rehearsal.traffic import Gate, Population, cadence_s, scaled_plan
from opsgate.rollout.controller import Action, State
from opsgate.rollout.service import RolloutEvent
from opsgate.runtime import Runtime
from opsgate.security.auth import TokenService
from opsgate.security.users import add_user

START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
TOKEN_REFRESH_S = 50 * 60
ADMIN = "rehearsal-admin"
DEFAULT_EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
NEVER_S = 1e12
REQUEST_TIMEOUT_S = 120.0
"""Longest wait for the whole answer to one request to the gateway, in seconds. The sandboxes answer
at once; a provider attempt gives up after 60 s and a database lock wait after 30 s, so an answer
still missing after this is lost, and the run fails naming the request (aiohttp's default: 300 s)."""
ROLLED_BACK = frozenset({State.ROLLING_BACK, State.ROLLED_BACK, State.ESCALATED})


@dataclass(frozen=True, slots=True)
class RehearsalConfig:
    """One run: simulated ``hours``, population ``users``, scenario name, ``seed``; an optional
    ``database_url`` (default: a SQLite file in a temporary directory); example inputs in
    ``examples`` (one ``<operation>.<ext>`` file each); ``calls_per_minute`` sampled calls per
    simulated minute at 100 %; ``concurrency`` requests in flight at most (above 1 a run is
    faster but the per-call faults and latencies, and so the p99 numbers, vary between runs)."""

    hours: float = 48
    users: int = 10_000
    scenario: str = "healthy"
    seed: int = 0
    database_url: str | None = None
    examples: Path = DEFAULT_EXAMPLES
    calls_per_minute: float = 4.0
    concurrency: int = 1


@dataclass
class Tally:
    """What the synthetic users saw: HTTP statuses, problem codes, serving providers, opt-in writes,
    response bodies that leaked a secret, and real measured wall-clock client latencies (ms)."""

    statuses: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    providers: Counter[str] = field(default_factory=Counter)
    opt_in_writes: int = 0
    leaks: int = 0
    client_latency_ms: list[float] = field(default_factory=list)


async def rehearse(config: RehearsalConfig, progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Run the rehearsal and return its report (:func:`opsgate.rehearsal.report.build_report`).
    ``progress`` receives the simulated fraction done (0..1). Raises ``KeyError`` for an unknown
    scenario; what the gateway's start-up raises (:func:`opsgate.app.open_app`: a
    :class:`~opsgate.config.ConfigError` for a key reference that cannot be resolved, a database
    that refuses) as itself."""
    scenario = get_scenario(config.scenario)
    bodies = {op: orjson.dumps(input_from_file(op, _example(config.examples, op))) for op in OPERATIONS}
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="opsgate-rehearsal-") as tmp:
        receiver = AlertReceiver()
        await receiver.start()
        try:
            settings = _settings(config, scenario, Path(tmp), receiver)
            clock = ManualClock(START)
            server = await asyncio.to_thread(  # a start-up failure raises here
                partial(serve_in_thread, open_app=partial(open_app, settings, clock)))
            try:
                run = _Run(config, scenario, settings, clock, cast(FastAPI, server.app).state.runtime, receiver,
                           bodies)
                async with aiohttp.ClientSession(server.base_url) as http, make_session() as notify:
                    await run.execute(http, notify, progress)
                    facts = await asyncio.to_thread(run.facts)
            finally:
                await asyncio.to_thread(server.stop)
        finally:
            await receiver.stop()
    return build_report(facts, wall_s=time.perf_counter() - wall)


class _Run:
    """The state of one rehearsal while it runs."""

    def __init__(self, config: RehearsalConfig, scenario: Scenario, settings: Settings, clock: ManualClock,
                 runtime: Runtime, receiver: AlertReceiver, bodies: dict[str, bytes]) -> None:
        self.config, self.scenario, self.settings, self.clock = config, scenario, settings, clock
        self.runtime, self.receiver, self.bodies = runtime, receiver, bodies
        self.plan = scaled_plan(config.hours)
        self.population = Population(config.users, config.seed)
        self.tokens = TokenService(settings, clock)
        self.issued: dict[str, tuple[str, datetime]] = {}
        self.tally = Tally()
        self.timeline: list[dict[str, Any]] = []
        self.events: list[RolloutEvent] = []
        self.holds = 0
        self.stage_started: dict[int, datetime] = {}
        self.profile = "none"
        self.fault_log: list[dict[str, Any]] = []
        self.rollout_id = 0
        self.end = START + timedelta(hours=config.hours)
        self.secrets = _secrets(runtime.settings)
        add_user(runtime.engine, clock, ADMIN, "admin")  # its admin calls need a row (current_principal)

    # the run ---------------------------------------------------------------------------------
    async def execute(self, http: aiohttp.ClientSession, notify: aiohttp.ClientSession,
                      progress: Callable[[float], None] | None) -> None:
        """Start the rollout, then evaluation windows until the simulated end."""
        self.http = http
        self.worker = Worker(self.settings, self.runtime.engine, self.runtime.ledger, self.clock, notify,
                             worker_id="rehearsal")
        self.worker.rollout.listeners.append(self.events.append)
        await self._start_rollout()
        total = (self.end - START).total_seconds()
        while self.clock.now() < self.end:
            rollout = await self._rollout()
            self._note_stage(rollout)
            window = min(cadence_s(rollout["stage_index"]), (self.end - self.clock.now()).total_seconds())
            await self._window(window)
            await self._monitor()
            if progress is not None:
                progress((self.clock.now() - START).total_seconds() / total)

    async def _start_rollout(self) -> None:
        for op in OPERATIONS:
            await self._admin("PUT", f"/v1/admin/toggles/{op}",
                              {"opt_in_required": True, "reason": "rehearsal: users opt in"})
        body: dict[str, Any] = {"operations": sorted(OPERATIONS), "plan": {
            "stages": [{"percentage": s.percentage, "seconds": s.seconds} for s in self.plan.stages],
            "observation_s": self.plan.observation_s}}
        if self.scenario.candidate is not None:
            body |= {"operations": [self.scenario.candidate.operation], "variant": self.scenario.candidate.name}
        self.rollout_id = (await self._admin("POST", "/v1/admin/rollouts", body))["id"]

    async def _window(self, window_s: float) -> None:
        window_start = self.clock.now()
        gates = await self._gates()
        if self.scenario.candidate is not None:  # a variant rollout: all traffic to its operation
            gates = {self.scenario.candidate.operation: gates[self.scenario.candidate.operation]}
        pct = max((g.percentage for g in gates.values() if g.enabled), default=0)
        n = self.population.calls_for(pct, window_s, self.config.calls_per_minute)
        chunks = max(1, min(n, int(window_s // 60)))
        sizes = [n // chunks + (1 if i < n % chunks else 0) for i in range(chunks)]
        for i, size in enumerate(sizes):
            self._move_to(window_start + timedelta(seconds=window_s * (i + 1) / (chunks + 1)))
            calls, deciding = self.population.draw(gates, size)
            if i == 0:
                deciding += self.population.churn(window_s)
                calls += self.population.strays(list(gates))
            for user in deciding:
                await self._opt_in(user, self.population.decided[user])
            await self._send(calls)
        self._move_to(window_start + timedelta(seconds=window_s))

    async def _monitor(self) -> None:
        """The worker's jobs at the window's end, then the canary evaluation."""
        w = self.worker
        await asyncio.to_thread(w.handle_signals)
        await asyncio.to_thread(w.evaluate_rules)
        await asyncio.to_thread(w.incidents.escalate_due)
        await asyncio.to_thread(w.incidents.repeat_due)
        decisions = await asyncio.to_thread(w.rollout.evaluate_all, w.incidents.open_p1)
        await asyncio.to_thread(w.handle_signals)
        while await w.outbox.dispatch_once():
            pass
        for decision in decisions.values():
            self._record(decision)

    # requests --------------------------------------------------------------------------------
    async def _send(self, calls: list[tuple[str, str]]) -> None:
        if not calls:
            return
        await self._call(*calls[0])
        limit = asyncio.Semaphore(self.config.concurrency)

        async def bounded(user: str, op: str) -> None:
            async with limit:
                await self._call(user, op)

        await asyncio.gather(*(bounded(u, o) for u, o in calls[1:]))

    async def _call(self, user: str, op: str) -> None:
        started = time.perf_counter()
        status, raw = await exchange(self.http, "POST", f"/v1/operations/{op}", self.bodies[op],
                                     self._headers(user, "user"), check=False)
        self.tally.client_latency_ms.append((time.perf_counter() - started) * 1000)
        self.tally.statuses[str(status)] += 1
        self.tally.leaks += any(s in raw for s in self.secrets)
        doc = orjson.loads(raw)
        if status == 200:
            self.tally.providers[doc["provider"]] += 1
        else:
            self.tally.codes[doc.get("code", "?")] += 1

    async def _opt_in(self, user: str, choice: bool) -> None:
        body = orjson.dumps({"opt_in": {op: choice for op in sorted(OPERATIONS)}})
        await exchange(self.http, "PUT", "/v1/me/settings", body, self._headers(user, "user"), check=True)
        self.tally.opt_in_writes += 1

    async def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = orjson.dumps(body) if body is not None else None
        _, raw = await exchange(self.http, method, path, data, self._headers(ADMIN, "admin"), check=True)
        return orjson.loads(raw)

    async def _gates(self) -> dict[str, Gate]:
        toggles = (await self._admin("GET", "/v1/admin/toggles"))["toggles"]
        return {t["operation"]: Gate(t["enabled"] and not t["kill_switch"], t["rollout_percentage"], t["group_id"])
                for t in toggles}

    async def _rollout(self) -> dict[str, Any]:
        found = (await self._admin("GET", "/v1/admin/rollouts"))["rollouts"]
        return next(r for r in found if r["id"] == self.rollout_id)

    def _headers(self, user: str, role: str) -> dict[str, str]:
        now = self.clock.now()
        token, issued = self.issued.get(user, ("", START - timedelta(days=1)))
        if (now - issued).total_seconds() >= TOKEN_REFRESH_S:
            token = self.tokens.issue(user, role)
            self.issued[user] = (token, now)
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    # time and faults -------------------------------------------------------------------------
    def _move_to(self, at: datetime) -> None:
        step = (at - self.clock.now()).total_seconds()
        if step > 0:
            self.clock.advance(step)
        self._apply_faults()

    def _note_stage(self, rollout: dict[str, Any]) -> None:
        index = rollout["stage_index"]
        if index not in self.stage_started:
            self.stage_started[index] = datetime.fromisoformat(rollout["stage_started_at"])

    def _apply_faults(self) -> None:
        now = self.clock.now()
        scale = self.config.hours / 48
        active = []
        for f in self.scenario.faults:
            began = self.stage_started.get(f.stage)
            if began is None:
                continue
            start = began + timedelta(seconds=round(f.after_s * scale))
            if start <= now and (f.duration_s is None or now < start + timedelta(seconds=f.duration_s)):
                active.append(f.profile)
        profile = ",".join(active) or "none"
        if profile != self.profile:
            self.runtime.sandbox.set_faults(profile)  # type: ignore[union-attr]  # rehearsals run on sandboxes
            self.fault_log.append({"at": now.isoformat(), "hours": _hours(now), "faults": profile})
            self.profile = profile

    # results ---------------------------------------------------------------------------------
    def _record(self, decision: Any) -> None:
        if decision.action is Action.HOLD:
            self.holds += 1
            return
        now = self.clock.now()
        self.timeline.append({
            "at": now.isoformat(), "hours": _hours(now), "action": decision.action.value,
            "variant": self.scenario.candidate.name if self.scenario.candidate else None,
            "state": decision.after.state.value, "stage_index": decision.after.stage_index,
            "percentage": 0 if decision.after.state in ROLLED_BACK else self.plan.percentage(decision.after.stage_index),
            "reason": decision.reason, "numbers": decision.numbers,
        })

    def facts(self) -> dict[str, Any]:
        """Everything :func:`build_report` needs, read after the last window (blocking)."""
        rollout = self.runtime.rollout.get_rollout(self.rollout_id)
        candidate = self.scenario.candidate
        return {
            "live_variant": self.runtime.rollout.assignment(candidate.operation).live if candidate else None,
            "config": self.config, "scenario": self.scenario, "tally": self.tally, "holds": self.holds,
            "timeline": self.timeline, "faults": self.fault_log,
            "alerts": [{"kind": e.kind, "severity": e.severity, "at": e.at.isoformat()} for e in self.events],
            "receiver": dict(self.receiver.counts),
            "receiver_leaks": sum(any(s in b for s in self.secrets) for b in self.receiver.bodies),
            "rollout": rollout.to_json(), "incidents": self.worker.incidents.list(limit=1000),
            "log": log_facts(self.runtime.engine, self.settings), "ledger": verify(self.runtime.engine),
            "population": {"users": self.config.users, "active": len(self.population.active),
                           "decided": len(self.population.decided),
                           "opted_in": sum(self.population.decided.values())},
        }


async def exchange(http: aiohttp.ClientSession, method: str, path: str, body: bytes | None,
                   headers: dict[str, str], *, check: bool, timeout_s: float = REQUEST_TIMEOUT_S) -> tuple[int, bytes]:
    """Send one request over ``http`` and read its whole answer: ``(status, body)``. Raises
    ``TimeoutError`` naming the request when the answer is not complete within ``timeout_s``
    seconds, and with ``check`` ``aiohttp.ClientResponseError`` for a status of 400 or more."""
    try:
        async with http.request(method, path, data=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            raw = await resp.read()
            if check:
                resp.raise_for_status()
            return resp.status, raw
    except TimeoutError as exc:
        raise TimeoutError(f"the gateway did not answer {method} {path} within {timeout_s:g} s") from exc


def _settings(config: RehearsalConfig, scenario: Scenario, tmp: Path, receiver: AlertReceiver) -> Settings:
    url = config.database_url or f"sqlite:///{tmp / 'rehearsal.db'}"
    return Settings(
        **_candidate_settings(scenario, tmp),
        database_url=url, auto_migrate=True, sandbox=True, sandbox_faults="none", sandbox_latency_seed=config.seed,
        jwt_secret=secrets.token_urlsafe(32), jwt_secret_file=tmp / "jwt-secret",
        master_key_file=tmp / "master-key", worker_lock_file=tmp / "worker.lock",
        ledger_signing_key_file=tmp / "ledger-signing.key",
        canary_eval_interval_s=NEVER_S,
        discord_webhook_url=receiver.base_url + DISCORD_PATH,
        pagerduty_url=receiver.base_url + PAGERDUTY_PATH, pagerduty_routing_key=secrets.token_hex(16),
        twilio_base_url=receiver.base_url, twilio_account_sid="AC" + secrets.token_hex(16),
        twilio_auth_token=secrets.token_hex(16), twilio_from="+15005550006", sms_to=["+15005550001"],
    )


def _candidate_settings(scenario: Scenario, tmp: Path) -> dict[str, Any]:
    """``variants``, ``prices`` and ``prompts_dir`` for a variant scenario's candidate (the price
    without a cache discount, so the comparison is the model's price alone)."""
    c = scenario.candidate
    if c is None:
        return {}
    prompt = None
    if c.prompt is not None:
        prompt = "v2"
        (tmp / "prompts" / c.operation).mkdir(parents=True)
        (tmp / "prompts" / c.operation / f"{prompt}.txt").write_text(c.prompt, encoding="utf-8")
    extra: dict[str, Any] = {"variants": {c.operation: {c.name: VariantConfig(chain=c.chain, prompt=prompt)}}}
    if c.prompt is not None:
        extra["prompts_dir"] = tmp / "prompts"
    if c.price is not None:
        price = PriceConfig(input=c.price[0], output=c.price[1], cache_read=c.price[0])
        extra["prices"] = {target: price for target in c.chain}
    return extra


def _secrets(settings: Settings) -> list[bytes]:
    """Values no response or alert may contain (PagerDuty's routing key travels in its body by design)."""
    values = [settings.anthropic_api_key, settings.deepseek_api_key, settings.gemini_api_key, settings.jwt_secret,
              settings.twilio_auth_token]
    return [v.get_secret_value().encode() for v in values if v is not None]


def _example(examples: Path, op: str) -> Path:
    found = sorted(examples.glob(f"{op}.*"))
    if not found:
        raise FileNotFoundError(f"no example input for {op} in {examples}/")
    return found[0]


def _hours(at: datetime) -> float:
    return round((at - START).total_seconds() / 3600, 4)
