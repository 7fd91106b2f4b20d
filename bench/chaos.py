"""Replicas under load with faults injected (issue 15, item 4): ``./dev chaos --minutes N``.

What runs, all on loopback, all started and stopped by this script:

- its OWN PostgreSQL 15 cluster (``initdb`` into a temporary directory owned by ``postgres``, on a
  free port, run with ``runuser -u postgres -- pg_ctl``; ``fsync=off`` spares the shared disk: the
  schedule restarts PostgreSQL cleanly, it never crashes the machine) and its OWN ``redis-server``
  on a free port. The machine's shared PostgreSQL (5432) and Redis (6379) are never touched;
- ``opsgate sandbox`` (Anthropic, DeepSeek, Gemini) answering after ``slow:LATENCY`` (a fixed
  provider latency; fault profiles switched over ``POST /_sandbox/faults``);
- three ``opsgate serve`` replicas behind :class:`Balancer`, a round-robin TCP proxy (asyncio)
  that sends each new connection to the next replica accepting connections (a replica that
  refuses is skipped), and two ``opsgate worker`` processes (one leads, one stands by);
- :class:`Receivers`: Discord's execute-webhook (200 and the message), PagerDuty Events v2 (202)
  and Twilio Messages (201) on one aiohttp server, recording every delivery they accept;
- :data:`USERS` fixed users, each calling the nine operations in turn (a new connection per call),
  under a per-user daily budget (every third user's is small enough to run out: 402) and a
  per-user rate limit (429; the user waits out ``Retry-After``);
- a canary rollout of :data:`CANARY_OPS` (5 % -> 25 % -> 100 %, stages scaled to the run),
  evaluated by the worker against the other seven operations (control).

The worker's rules are tuned so alerts flow during the whole run: the p99 warning threshold is
below the sandbox latency (one P2 warning per operation, Discord, repeated while unacknowledged)
and a provider counts as out after :data:`OUTAGE_ALERT_S` (P2, pages: Discord and PagerDuty).
At the end the script acknowledges and resolves every open incident through the API, as an
operator would (PagerDuty ``acknowledge``/``resolve``), and waits for the outbox to drain.

Fault schedule, in turn, one slot each after a warm-up (durations are the nominal ones of a
10-minute run, scaled by ``minutes / 10`` for shorter runs and kept within the slot):

1. ``replica``: ``kill -9`` of one ``opsgate serve``; restarted after 20 s.
2. ``postgres``: ``pg_ctl restart -m fast``.
3. ``redis``: ``redis-server`` stopped for 30 s, then started again (empty).
4. ``leader``: ``kill -9`` of the leading worker (the standby takes over); restarted after 10 s.
5. ``hang``: the Discord receiver accepts and never answers for 30 s (then answers 503).
6. ``429``: the Discord receiver answers 429 (``retry_after`` 1 s) for 60 s.
7. ``outage``: Anthropic answers 529 for 60 s (the router falls back to DeepSeek).

Documented 5xx windows: only ``postgres`` (from the restart until :data:`PG_GRACE_S` after
PostgreSQL accepts connections again): a call whose ledger write meets the restart is refused
with 503 ``audit_unavailable``, never served unaudited. Everything else must answer without 5xx.
Redis down is a documented choice: the rate limiter fails OPEN (``metering/ratelimit.py``: logged,
calls admitted without a rate limit; budgets, in PostgreSQL, still guard money), so no 5xx and no
429 from the limiter while Redis is down. A ``kill -9`` of a replica drops the connections it
held: their clients see the connection close (counted as ``dropped``, not as 5xx); their open
intents are closed ``interrupted`` by ``opsgate ledger recover`` at the end.

Invariants printed at the end (exit 1 if one fails):

- ``admitted_calls_closed``: after ``opsgate ledger recover --older-than 0`` every intent in the
  ledger has a ``result`` (``incomplete=0``);
- ``chain_verifies_against_anchors``: ``opsgate ledger verify`` (signing key and directory
  anchor) prints ``OK`` with every entry checkpointed and anchored after a final checkpoint;
- ``budgets_within_limits``: every budget, sampled every second and at the end, has
  spent + reserved <= limit;
- ``alerts_once_in_order``: per receiver, every notification accepted once, and per incident
  (PagerDuty: per dedup key) in order: trigger first, nothing after resolve, no repeat after an
  acknowledgement, times never going back;
- ``no_5xx_outside_windows``;
- ``load_held``: every window (warm-up, each fault, tail) served calls (ops/s > 0); ops/s and the
  p99 of the calls answered 200 are printed per window.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import orjson
from aiohttp import web
from sqlalchemy import func, select

from opsgate.clock import SystemClock
from opsgate.config import Settings
from opsgate.metering.budgets import budget_statuses
from opsgate.monitoring.health import LEDGER_VERIFY
from opsgate.monitoring.models import outbox, signals, workers
from opsgate.operations import OPERATIONS
from opsgate.operations.io import input_from_file
from opsgate.security.auth import TokenService
from opsgate.security.users import add_user
from opsgate.store.db import make_engine

ROOT = Path(__file__).resolve().parents[1]
OPSGATE = str(Path(sys.executable).with_name("opsgate"))
PG_BIN = Path("/usr/lib/postgresql/15/bin")
USERS = 8
REPLICAS = 3
CANARY_OPS = ("task-breakdown", "analytics-anomaly")
LATENCY = "150ms"
RATE_LIMIT_RPM = 120
PACED_SHARE = 0.8
SMALL_BUDGET_USD, BUDGET_USD = "0.02", "50"
OUTAGE_ALERT_S = 3
PG_GRACE_S = 3.0
START_TIMEOUT_S = 180.0
DRAIN_TIMEOUT_S = 120.0
NOMINAL_S = {"replica": 20, "postgres": 0, "redis": 30, "leader": 10, "hang": 30, "429": 60, "outage": 60}
FAULTS = tuple(NOMINAL_S)


def log(message: str) -> None:
    """One progress line on stderr (the report goes to stdout)."""
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll ``check`` every 0.2 s until it is true; RuntimeError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except (OSError, aiohttp.ClientError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{what} did not come up within {timeout_s:.0f} s")


async def listening(port: int) -> bool:
    """True when 127.0.0.1:``port`` accepts a connection."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()
    return True


# the processes ---------------------------------------------------------------------------------
class Postgres:
    """A private PostgreSQL cluster in ``root/pg`` (owned by ``postgres``) on ``port``."""

    def __init__(self, root: Path, port: int) -> None:
        self.home, self.port = root / "pg", port
        self.data = self.home / "data"

    def _pg(self, *args: str, check: bool = True) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=check, cwd="/",
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def init(self) -> None:
        """initdb (trust authentication for ``postgres`` on loopback)."""
        self.home.mkdir()
        shutil.chown(self.home, "postgres", "postgres")
        self._pg(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        options = (f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 -c max_connections=300 "
                   f"-c fsync=off")
        self._pg(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.home / "log"), "-w", "-t", "120",
                 "-o", options, "start")

    def restart(self) -> None:
        """``pg_ctl restart -m fast`` (waits until it is back)."""
        self._pg(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "120", "-m", "fast", "restart")

    def stop(self) -> None:
        """Stop (fast), ignoring a cluster that is not running."""
        if self.data.exists():
            self._pg(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast", "stop", check=False)

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of its ``postgres`` database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


class Process:
    """A child process with its output in ``log``, started again by :meth:`start`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env, self.log_dir = name, argv, env, log_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (again); output appended to ``<log_dir>/<name>.log``."""
        with open(self.log_dir / f"{self.name}.log", "ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.log_dir, start_new_session=True)

    @property
    def pid(self) -> int:
        """The running process's id."""
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        """``kill -9`` and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill9()


# the load balancer -----------------------------------------------------------------------------
class Balancer:
    """Round-robin TCP proxy: each new connection goes to the next backend that accepts one."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self._next = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        """Listen on a free loopback port (``self.port``)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.ports)):
            port = self.ports[self._next % len(self.ports)]
            self._next += 1
            try:
                return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
            except (OSError, asyncio.TimeoutError):
                continue
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend = await self._connect()
        if backend is None:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, backend[1]), _pipe(backend[0], writer), return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


# the receivers ---------------------------------------------------------------------------------
@dataclass
class Delivery:
    """One accepted notification: ``stream`` (incident id, or PagerDuty dedup key), ``event``,
    ``at`` (the notification's time; PagerDuty acknowledge/resolve carry none: ``""``)."""

    channel: str
    stream: str
    event: str
    at: str


class Receivers:
    """Discord, PagerDuty and Twilio stand-ins on one port. ``mode[channel]`` is ``None``,
    ``"hang"`` (accept, never answer until the fault ends, then 503) or ``"429"``."""

    def __init__(self) -> None:
        self.mode: dict[str, str | None] = {"discord": None, "pagerduty": None, "sms": None}
        self.unhang = asyncio.Event()
        self.accepted: list[Delivery] = []
        self.refused: Counter[str] = Counter()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen on a free loopback port."""
        app = web.Application()
        app.router.add_post("/api/webhooks/1/chaos", lambda r: self._handle(r, "discord"))
        app.router.add_post("/v2/enqueue", lambda r: self._handle(r, "pagerduty"))
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", lambda r: self._handle(r, "sms"))
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request, channel: str) -> web.Response:
        raw = await request.read()
        mode = self.mode[channel]
        if mode == "hang":
            self.refused[f"{channel}:hang"] += 1
            await self.unhang.wait()
            return web.json_response({"message": "hung"}, status=503)
        if mode == "429":
            self.refused[f"{channel}:429"] += 1
            return web.json_response({"message": "You are being rate limited.", "retry_after": 1.0,
                                      "global": False}, status=429, headers={"Retry-After": "1"})
        self.accepted.append(_delivery(channel, raw))
        if channel == "discord":
            return web.json_response({"id": str(len(self.accepted)), "type": 0}, status=200)
        if channel == "pagerduty":
            return web.json_response({"status": "success", "message": "Event processed"}, status=202)
        return web.json_response({"sid": f"SM{len(self.accepted):032d}", "status": "queued"}, status=201)


_TEXT_HEAD = re.compile(r"\[(P\d)\] ([A-Z_]+): ")
_TEXT_TAIL = re.compile(r"incident (\S+) · (\S+) · (\S+)")


def _delivery(channel: str, raw: bytes) -> Delivery:
    if channel == "pagerduty":
        body = orjson.loads(raw)
        return Delivery(channel, body["dedup_key"], body["event_action"],
                        body.get("payload", {}).get("timestamp", ""))
    if channel == "discord":
        text = orjson.loads(raw)["content"]
    else:
        text = parse_qs(raw.decode())["Body"][0]
    head, tail = _TEXT_HEAD.search(text), _TEXT_TAIL.search(text)
    if head is None or tail is None:
        return Delivery(channel, "?", "unparsed", "")
    return Delivery(channel, tail[1], head[2].lower(), tail[3])


def order_problems(deliveries: list[Delivery]) -> list[str]:
    """Duplicates and out-of-order deliveries, per (channel, stream), in arrival order."""
    problems: list[str] = []
    streams: dict[tuple[str, str], list[Delivery]] = defaultdict(list)
    for d in deliveries:
        streams[(d.channel, d.stream)].append(d)
    for (channel, stream), seq in streams.items():
        problems += [f"{channel} {stream}: {p}" for p in
                     (_pagerduty_problems(seq) if channel == "pagerduty" else _text_problems(seq))]
    return problems


def _text_problems(seq: list[Delivery]) -> list[str]:
    seen: set[tuple[str, str]] = set()
    problems, state, last_at = [], "new", ""
    for d in seq:
        if d.event == "delivery_failure":
            continue
        if (d.event, d.at) in seen:
            problems.append(f"{d.event} at {d.at} delivered twice")
        seen.add((d.event, d.at))
        if d.at < last_at:
            problems.append(f"{d.event} at {d.at} after one of {last_at}")
        last_at = max(last_at, d.at)
        allowed = {"new": {"trigger"}, "open": {"escalate", "repeat", "acknowledge", "resolve"},
                   "acknowledged": {"resolve"}, "resolved": set()}[state]
        if d.event not in allowed:
            problems.append(f"{d.event} while {state}")
        state = {"trigger": "open", "escalate": "open", "repeat": "open", "acknowledge": "acknowledged",
                 "resolve": "resolved"}.get(d.event, state)
    return problems


def _pagerduty_problems(seq: list[Delivery]) -> list[str]:
    seen: set[str] = set()
    problems, state = [], "resolved"
    for d in seq:
        if d.event == "trigger":
            if d.at in seen:
                problems.append(f"trigger of {d.at} delivered twice")
            seen.add(d.at)
            if state == "acknowledged":
                problems.append(f"trigger of {d.at} after acknowledge")
            state = "open" if state != "acknowledged" else state
        elif d.event == "acknowledge":
            if state != "open":
                problems.append(f"acknowledge while {state}")
            state = "acknowledged"
        elif d.event == "resolve":
            if state == "resolved":
                problems.append("resolve while resolved")
            state = "resolved"
    return problems


# the load --------------------------------------------------------------------------------------
@dataclass
class Call:
    """One call as its user saw it: start and end (s since the load began), HTTP status (0: the
    connection dropped), latency (ms), the problem's ``code`` when refused."""

    start: float
    end: float
    status: int
    latency_ms: float
    code: str = ""


@dataclass
class Load:
    """The users' calls through the balancer."""

    base: str
    tokens: dict[str, str]
    bodies: dict[str, bytes]
    t0: float = field(default_factory=time.monotonic)
    calls: list[Call] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def now(self) -> float:
        """Seconds since the load began."""
        return time.monotonic() - self.t0

    async def run(self) -> None:
        """Every user calls until :attr:`stop` is set."""
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(self.base, connector=connector, timeout=timeout) as http:
            await asyncio.gather(*(self._user(http, i, user) for i, user in enumerate(self.tokens)))

    async def _user(self, http: aiohttp.ClientSession, i: int, user: str) -> None:
        ops = sorted(OPERATIONS)
        n = i
        headers = {"Authorization": f"Bearer {self.tokens[user]}", "Content-Type": "application/json"}
        greedy = i == len(self.tokens) - 1
        pace_s = 0.0 if greedy else 60 / (PACED_SHARE * RATE_LIMIT_RPM)
        while not self.stop.is_set():
            op = ops[n % len(ops)]
            n += 1
            started = self.now()
            wait, code = 0.0, ""
            try:
                async with http.post(f"/v1/operations/{op}", data=self.bodies[op], headers=headers) as resp:
                    raw = await resp.read()
                    status = resp.status
                    if status != 200:
                        code = _problem_code(raw)
                    if status == 429:
                        wait = min(float(resp.headers.get("Retry-After", "1")), 2.0)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                status, wait, code = 0, 0.2, "dropped"
            ended = self.now()
            self.calls.append(Call(started, ended, status, (ended - started) * 1000, code))
            if status == 402:
                wait = 1.0
            await asyncio.sleep(max(wait, pace_s - (ended - started)))


def _problem_code(raw: bytes) -> str:
    try:
        return str(orjson.loads(raw).get("code", "?"))
    except (orjson.JSONDecodeError, AttributeError):
        return "?"


# the run ---------------------------------------------------------------------------------------
@dataclass
class Window:
    """A named stretch of the run (s since the load began); ``allow_5xx`` marks a documented one."""

    name: str
    start: float
    end: float
    allow_5xx: tuple[float, float] | None = None


class Chaos:
    """One chaos run of ``minutes`` (see the module docstring)."""

    def __init__(self, minutes: float, root: Path) -> None:
        self.minutes, self.root = minutes, root
        self.total_s = minutes * 60
        self.scale = min(1.0, minutes / 10)
        self.warmup_s = max(5.0, 0.05 * self.total_s)
        self.slot_s = (self.total_s - 2 * self.warmup_s) / len(FAULTS)
        self.windows: list[Window] = []
        self.budget_samples = 0
        self.budget_over: list[str] = []
        self.injected: list[str] = []
        self.operator_errors: list[str] = []
        self.incidents: Counter[str] = Counter()
        self.ledger_checks: list[str] = []

    def duration(self, fault: str) -> float:
        """The fault's nominal duration scaled to the run, kept within 80 % of a slot."""
        return min(NOMINAL_S[fault] * self.scale, 0.8 * self.slot_s)

    # setting up ------------------------------------------------------------------------------
    async def setup(self) -> None:
        """Start PostgreSQL, Redis, the sandbox, receivers, replicas, workers and the balancer."""
        self.root.chmod(0o755)  # postgres must reach its directory inside
        self.logs = self.root / "logs"
        self.logs.mkdir()
        self.pg = Postgres(self.root, free_port())
        self.pg.init()
        self.pg.start()
        redis_port, sandbox_port = free_port(), free_port()
        self.redis = Process("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no"], dict(os.environ), self.logs)
        self.redis.start()
        self.receivers = Receivers()
        await self.receivers.start()
        self.env = self._env(redis_port, sandbox_port)
        self.sandbox = Process("sandbox", [OPSGATE, "sandbox", "--port", str(sandbox_port),
                                           "--faults", f"slow:{LATENCY}"], self.env, self.logs)
        self.sandbox.start()
        self.sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        self._cli("db", "upgrade")
        self._cli("ledger", "keygen")
        for i, user in enumerate(self.users):
            limit = SMALL_BUDGET_USD if i % 3 == 0 else BUDGET_USD
            self._cli("budgets", "set", "--user", user, "--period", "day", "--limit-usd", limit)
        ports = [free_port() for _ in range(REPLICAS)]
        self.replicas = [Process(f"serve-{i}", [OPSGATE, "serve", "--port", str(p)], self.env, self.logs)
                         for i, p in enumerate(ports)]
        self.workers = [Process(f"worker-{i}", [OPSGATE, "worker"], self.env, self.logs) for i in range(2)]
        for p in [*self.replicas, *self.workers]:
            p.start()
        await wait_for(lambda: listening(redis_port), "redis")
        await wait_for(lambda: listening(sandbox_port), "the sandbox")
        for port in ports:
            await wait_for(lambda port=port: self._ready(port), f"opsgate serve on {port}")  # type: ignore[misc]
        self.balancer = Balancer(ports)
        await self.balancer.start()
        self.engine = make_engine(self.pg.url)
        await wait_for(lambda: asyncio.to_thread(lambda: self._leader_pid(True) is not None), "a leading worker")

    @property
    def users(self) -> list[str]:
        """The fixed users."""
        return [f"chaos-user-{i:02d}" for i in range(USERS)]

    def _env(self, redis_port: int, sandbox_port: int) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")}
        sandbox = f"http://127.0.0.1:{sandbox_port}"
        receivers = f"http://127.0.0.1:{self.receivers.port}"
        self.jwt_secret = secrets.token_urlsafe(48)
        settings = {
            "DATABASE_URL": self.pg.url, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "JWT_SECRET": self.jwt_secret, "JWT_SECRET_FILE": str(self.root / "jwt"),
            "MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
            "MASTER_KEY_FILE": str(self.root / "master"), "WORKER_LOCK_FILE": str(self.root / "worker.lock"),
            "LEDGER_SIGNING_KEY_FILE": str(self.root / "ledger.key"), "LEDGER_ANCHOR_DIR": str(self.root / "anchors"),
            "LEDGER_CHECKPOINT_INTERVAL_S": "2",
            "ANTHROPIC_BASE_URL": f"{sandbox}/anthropic", "DEEPSEEK_BASE_URL": f"{sandbox}/deepseek",
            "GEMINI_BASE_URL": f"{sandbox}/gemini",
            "ANTHROPIC_API_KEY": secrets.token_hex(16), "DEEPSEEK_API_KEY": secrets.token_hex(16),
            "GEMINI_API_KEY": secrets.token_hex(16),
            "RATE_LIMIT_USER_RPM": str(RATE_LIMIT_RPM),
            "PROVIDER_STATUS_INTERVAL_S": "1", "BREAKER_COOLDOWN_S": str(max(2.0, 30 * self.scale)),
            "WORKER_TICK_S": "0.5", "ALERT_EVAL_INTERVAL_S": "1", "CANARY_EVAL_INTERVAL_S": "2",
            "ALERT_REPEAT_INTERVAL_S": str(max(2, round(20 * self.scale))),
            "ALERT_PROVIDER_UNAVAILABLE_S": str(OUTAGE_ALERT_S), "ALERT_P99_LATENCY_MS": "50",
            "ALERT_MIN_REQUESTS": "5", "HEALTH_WINDOW_S": str(max(60, round(self.total_s))),
            "OUTBOX_MAX_BACKOFF_S": "2",
            "DISCORD_WEBHOOK_URL": f"{receivers}/api/webhooks/1/chaos",
            "PAGERDUTY_URL": f"{receivers}/v2/enqueue", "PAGERDUTY_ROUTING_KEY": secrets.token_hex(16),
            "TWILIO_BASE_URL": receivers, "TWILIO_ACCOUNT_SID": "AC" + secrets.token_hex(16),
            "TWILIO_AUTH_TOKEN": secrets.token_hex(16), "TWILIO_FROM": "+15005550006",
            "SMS_TO": '["+15005550001"]', "LOG_LEVEL": "warning",
        }
        return {**base, **{f"OPSGATE_{k}": v for k, v in settings.items()}}

    def _cli(self, *args: str) -> str:
        done = subprocess.run([OPSGATE, *args], env=self.env, cwd=self.logs, capture_output=True, text=True)
        if done.returncode not in (0, 1):
            raise RuntimeError(f"opsgate {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
        return done.stdout

    async def _ready(self, port: int) -> bool:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as resp:
            return resp.status == 200

    def _leader_pid(self, ours: bool = False) -> int | None:
        with self.engine.connect() as conn:
            holder = conn.execute(select(workers.c.holder).where(workers.c.name == "leader")).scalar()
        pid = int(holder.rsplit(":", 1)[1]) if holder else None
        if ours and pid not in {w.pid for w in self.workers}:
            return None
        return pid

    # running ---------------------------------------------------------------------------------
    async def run(self) -> int:
        """Set up, run the load with the fault schedule, check and print. Returns the exit code."""
        try:
            await self.setup()
            tokens = TokenService(Settings(jwt_secret=self.jwt_secret), SystemClock())
            add_user(self.engine, SystemClock(), "chaos-operator", "admin")  # a local admin token needs its row
            self.admin = tokens.issue("chaos-operator", "admin")
            load = Load(f"http://127.0.0.1:{self.balancer.port}",
                        {u: tokens.issue(u, "user") for u in self.users}, _bodies())
            await self._start_rollout(load.base)
            for user, token in load.tokens.items():  # every user opts in to the nine operations
                await self._call(load.base, token, "PUT", "/v1/me/settings",
                                 {"opt_in": {op: True for op in sorted(OPERATIONS)}})
            log(f"stack up; load for {self.total_s:.0f} s, faults every {self.slot_s:.1f} s")
            sampler = asyncio.create_task(self._sample_budgets())
            runner = asyncio.create_task(load.run())
            await self._schedule(load)
            load.stop.set()
            await runner
            self.rollout = await self._admin(load.base, "GET", "/v1/admin/rollouts")
            await self._operator_closes_incidents(load.base)
            sampler.cancel()
            return await asyncio.to_thread(self._finish, load)
        finally:
            await self.teardown()

    async def _schedule(self, load: Load) -> None:
        self.windows.append(Window("warm-up", 0.0, self.warmup_s))
        for i, fault in enumerate(FAULTS):
            start = self.warmup_s + i * self.slot_s
            await asyncio.sleep(max(0.0, start - load.now()))
            log(f"fault {fault}")
            allow = await getattr(self, f"_fault_{fault.replace('429', 'rate_limited')}")(load)
            self.windows.append(Window(fault, start, start + self.slot_s, allow))
        tail = self.warmup_s + len(FAULTS) * self.slot_s
        await asyncio.sleep(max(0.0, self.total_s - load.now()))
        self.windows.append(Window("tail", tail, max(load.now(), tail + 0.1)))

    async def _fault_replica(self, load: Load) -> None:
        victim = self.replicas[1]
        victim.kill9()
        self.injected.append(f"replica: kill -9 of serve-1 (pid {victim.pid})")
        await asyncio.sleep(self.duration("replica"))
        victim.start()
        self.injected[-1] += f", restarted after {self.duration('replica'):.1f} s (pid {victim.pid})"

    async def _fault_postgres(self, load: Load) -> tuple[float, float]:
        began = load.now()
        await asyncio.to_thread(self.pg.restart)
        back = load.now()
        self.injected.append(f"postgres: pg_ctl restart -m fast, back after {back - began:.1f} s")
        return began, back + PG_GRACE_S

    async def _fault_redis(self, load: Load) -> None:
        self.redis.stop()
        await asyncio.sleep(self.duration("redis"))
        self.redis.start()
        self.injected.append(f"redis: stopped for {self.duration('redis'):.1f} s, started again (empty)")

    async def _fault_leader(self, load: Load) -> None:
        pid = await asyncio.to_thread(self._leader_pid, True)
        victim = next((w for w in self.workers if w.pid == pid), self.workers[0])
        victim.kill9()
        await asyncio.sleep(self.duration("leader"))
        victim.start()
        self.injected.append(f"leader: kill -9 of the leading worker (pid {pid}), restarted as a standby "
                             f"after {self.duration('leader'):.1f} s")

    async def _fault_hang(self, load: Load) -> None:
        self.receivers.unhang.clear()
        self.receivers.mode["discord"] = "hang"
        await asyncio.sleep(self.duration("hang"))
        self.receivers.mode["discord"] = None
        self.receivers.unhang.set()
        self.injected.append(f"hang: the Discord receiver never answered for {self.duration('hang'):.1f} s "
                             f"({self.receivers.refused['discord:hang']} sends held)")

    async def _fault_rate_limited(self, load: Load) -> None:
        self.receivers.mode["discord"] = "429"
        await asyncio.sleep(self.duration("429"))
        self.receivers.mode["discord"] = None
        self.injected.append(f"429: the Discord receiver answered 429 for {self.duration('429'):.1f} s "
                             f"({self.receivers.refused['discord:429']} answers)")

    async def _fault_outage(self, load: Load) -> None:
        await self._sandbox_faults(f"slow:{LATENCY},outage:anthropic")
        await asyncio.sleep(self.duration("outage"))
        await self._sandbox_faults(f"slow:{LATENCY}")
        self.injected.append(f"outage: Anthropic answered 529 for {self.duration('outage'):.1f} s")

    async def _sandbox_faults(self, profile: str) -> None:
        async with aiohttp.ClientSession() as http, http.post(
                f"{self.sandbox_url}/_sandbox/faults", json={"profile": profile}) as resp:
            resp.raise_for_status()

    async def _start_rollout(self, base: str) -> None:
        for op in sorted(set(OPERATIONS) - set(CANARY_OPS)):  # the control: on for everyone
            await self._admin(base, "PUT", f"/v1/admin/toggles/{op}",
                              {"enabled": True, "rollout_percentage": 100, "reason": "chaos: control"})
        third = max(1, round(self.total_s / 3))
        body = {"operations": list(CANARY_OPS), "plan": {"stages": [
            {"percentage": 5, "seconds": third}, {"percentage": 25, "seconds": third},
            {"percentage": 100, "seconds": third}], "observation_s": third}}
        await self._admin(base, "POST", "/v1/admin/rollouts", body)

    async def _admin(self, base: str, method: str, path: str, body: Any = None) -> Any:
        return await self._call(base, self.admin, method, path, body)

    async def _call(self, base: str, token: str, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession(base) as http, http.request(
                method, path, data=orjson.dumps(body) if body is not None else None, headers=headers) as resp:
            raw = await resp.read()
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status} {raw[:300]!r}")
        return orjson.loads(raw)

    async def _sample_budgets(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await asyncio.to_thread(self._check_budgets)
            except Exception:  # noqa: BLE001 (PostgreSQL restarting: the next sample counts)
                continue

    def _check_budgets(self) -> None:
        for s in budget_statuses(self.engine, SystemClock().now()):
            if s.spent_micro_usd + s.reserved_micro_usd > s.budget.limit_micro_usd:
                self.budget_over.append(f"{s.budget.scope}: {s.spent_micro_usd}+{s.reserved_micro_usd} > "
                                        f"{s.budget.limit_micro_usd}")
        self.budget_samples += 1

    async def _operator_closes_incidents(self, base: str) -> None:
        """Acknowledge, then resolve, every open incident through the API; wait for the outbox."""
        found = (await self._admin(base, "GET", "/v1/incidents?state=open"))["incidents"]
        for action, body in (("ack", None), ("resolve", {"note": "chaos run over"})):
            for incident in found:
                await self._operator_does(base, incident["id"], action, body)
        self.closed_by_operator = len(found)
        self.ledger_checks = await asyncio.to_thread(self._ledger_checks)
        self.incidents = Counter(f"{i['severity']} {i['rule']}" for i in
                                 (await self._admin(base, "GET", "/v1/incidents"))["incidents"])
        await wait_for(lambda: asyncio.to_thread(self._outbox_drained), "the outbox to drain", DRAIN_TIMEOUT_S)

    async def _operator_does(self, base: str, incident_id: str, action: str, body: Any) -> None:
        """One operator action on an incident. A 409 ``incident_conflict`` (the monitor repeated or
        escalated it meanwhile; changes are compare-and-set) is tried again, as an operator
        would, up to three times; any other failure is recorded."""
        for attempt in range(3):
            try:
                await self._admin(base, "POST", f"/v1/incidents/{incident_id}/{action}", body)
                return
            except RuntimeError as exc:
                if "HTTP 409" not in str(exc) or attempt == 2:
                    self.operator_errors.append(str(exc)[:200])
                    return

    def _ledger_checks(self) -> list[str]:
        """The workers' periodic ledger verifications: ``ok`` or the failure's detail."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(signals.c.ok, signals.c.detail).where(signals.c.kind == LEDGER_VERIFY)
                                .order_by(signals.c.id)).all()
        return ["ok" if ok else detail for ok, detail in rows]

    def _outbox_drained(self) -> bool:
        with self.engine.connect() as conn:
            return not conn.execute(select(func.count()).select_from(outbox).where(
                outbox.c.state.in_(("pending", "sending")))).scalar()

    # checking --------------------------------------------------------------------------------
    def _finish(self, load: Load) -> int:
        for p in [*self.workers, *self.replicas]:
            p.stop()
        recovered = self._cli("ledger", "recover", "--older-than", "0").splitlines()[0]
        self._cli("ledger", "checkpoint")
        verified = self._cli("ledger", "verify").strip()
        self._check_budgets()
        report = Report(self, load, recovered, verified)
        print(report.text())
        return 0 if report.ok else 1

    async def teardown(self) -> None:
        """Stop everything this run started (also after a failure)."""
        for p in [*getattr(self, "workers", []), *getattr(self, "replicas", []),
                  *[getattr(self, n) for n in ("sandbox", "redis") if hasattr(self, n)]]:
            p.stop(5.0)
        if hasattr(self, "balancer"):
            await self.balancer.stop()
        if hasattr(self, "receivers"):
            self.receivers.unhang.set()
            await self.receivers.stop()
        if hasattr(self, "engine"):
            self.engine.dispose()
        if hasattr(self, "pg"):
            self.pg.stop()


class Report:
    """The invariants and the per-window numbers of one run."""

    def __init__(self, run: Chaos, load: Load, recovered: str, verified: str) -> None:
        self.run, self.load, self.recovered, self.verified = run, load, recovered, verified
        self.rows = [self._window(w) for w in run.windows]
        self.checks = [self._closed(), self._chain(), self._budgets(), self._alerts(), self._no_5xx(),
                       self._held()]

    @property
    def ok(self) -> bool:
        """True when every invariant holds."""
        return all(passed for _, passed, _ in self.checks)

    def _in(self, w: Window) -> list[Call]:
        return [c for c in self.load.calls if w.start <= c.end < w.end]

    def _window(self, w: Window) -> dict[str, Any]:
        calls = self._in(w)
        ok = sorted(c.latency_ms for c in calls if c.status == 200)
        statuses = Counter(str(c.status) if c.status < 500 else "5xx" for c in calls)
        return {"name": w.name, "seconds": w.end - w.start, "calls": len(calls), "ok": len(ok),
                "ops_s": len(ok) / max(w.end - w.start, 1e-9),
                "p99_ms": ok[max(0, math.ceil(0.99 * len(ok)) - 1)] if ok else float("nan"),
                "refused": sum(n for s, n in statuses.items() if s.startswith("4")),
                "5xx": statuses["5xx"], "dropped": statuses["0"],
                "answers": ", ".join(f"{k} {n}" for k, n in Counter(
                    f"{c.status} {c.code}" for c in calls if c.status != 200).most_common(3))}

    def _closed(self) -> tuple[str, bool, str]:
        incomplete = re.search(r"incomplete=(\d+)", self.verified)
        ok = incomplete is not None and incomplete[1] == "0"
        return "admitted_calls_closed", ok, f"{self.recovered}; incomplete={incomplete[1] if incomplete else '?'}"

    def _chain(self) -> tuple[str, bool, str]:
        unanchored = re.search(r"unanchored=(\d+)", self.verified)
        ok = self.verified.startswith("OK ") and unanchored is not None and unanchored[1] == "0"
        return "chain_verifies_against_anchors", ok, self.verified

    def _budgets(self) -> tuple[str, bool, str]:
        over = self.run.budget_over
        detail = f"{self.run.budget_samples} samples of {USERS} user budgets"
        return "budgets_within_limits", not over and self.run.budget_samples > 0, \
            detail + (f"; over: {over[:3]}" if over else "")

    def _alerts(self) -> tuple[str, bool, str]:
        accepted = self.run.receivers.accepted
        problems = order_problems(accepted)
        counts = Counter(d.channel for d in accepted)
        detail = ", ".join(f"{ch}={counts[ch]}" for ch in ("discord", "pagerduty", "sms"))
        detail += f"; refused during faults: {dict(self.run.receivers.refused)}"
        detail += f"; incidents closed by the operator: {self.run.closed_by_operator}"
        problems += self.run.operator_errors
        if problems:
            detail += f"; problems: {problems[:5]}"
        return "alerts_once_in_order", not problems and counts["discord"] > 0, detail

    def _no_5xx(self) -> tuple[str, bool, str]:
        allowed = [w.allow_5xx for w in self.run.windows if w.allow_5xx]
        bad = [c for c in self.load.calls if c.status >= 500
               and not any(a <= c.end <= b for a, b in allowed)]
        inside = sum(1 for c in self.load.calls if c.status >= 500) - len(bad)
        detail = f"5xx inside documented windows: {inside}, outside: {len(bad)}"
        if bad:
            detail += f" (first at {bad[0].end:.1f} s: {bad[0].status})"
        return "no_5xx_outside_windows", not bad, detail

    def _held(self) -> tuple[str, bool, str]:
        empty = [r["name"] for r in self.rows if r["ok"] == 0]
        return "load_held", not empty, "every window served calls" if not empty else f"no call served in {empty}"

    def text(self) -> str:
        """The report as printed."""
        lines = [f"chaos run: {self.run.minutes:g} min, {REPLICAS} replicas, 2 workers, {USERS} users, "
                 f"sandbox latency {LATENCY}, {len(self.load.calls)} calls", "faults injected:"]
        lines += [f"  {i}. {text}" for i, text in enumerate(self.run.injected, 1)]
        rollout: dict[str, Any] = next(iter(self.run.rollout.get("rollouts", [])), {})
        lines.append(f"canary rollout of {', '.join(CANARY_OPS)}: state={rollout.get('state')} "
                     f"stage={rollout.get('stage_index')} ({rollout.get('percentage')} %) "
                     f"reason: {rollout.get('reason') or '-'}")
        lines.append(f"the workers' ledger checks: {self.run.ledger_checks}")
        lines.append("incidents: " + (", ".join(f"{k}: {n}" for k, n in sorted(self.run.incidents.items())) or "none"))
        codes = Counter(f"{c.status} {c.code}" for c in self.load.calls if c.status != 200)
        lines.append("not served, by answer: " + (", ".join(f"{k}: {n}" for k, n in codes.most_common()) or "none"))
        lines.append(f"{'window':<10} {'s':>6} {'calls':>6} {'ok':>6} {'ops/s':>7} {'p99 ms':>8} "
                     f"{'4xx':>5} {'5xx':>5} {'dropped':>7}  most frequent refusals")
        for r in self.rows:
            lines.append(f"{r['name']:<10} {r['seconds']:6.1f} {r['calls']:6d} {r['ok']:6d} {r['ops_s']:7.2f} "
                         f"{r['p99_ms']:8.0f} {r['refused']:5d} {r['5xx']:5d} {r['dropped']:7d}  {r['answers']}")
        lines += [f"INVARIANT {name}: {'PASS' if passed else 'FAIL'} ({detail})" for name, passed, detail in self.checks]
        lines.append(f"RESULT: {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(lines)


def _bodies() -> dict[str, bytes]:
    found = {op: sorted((ROOT / "examples").glob(f"{op}.*"))[0] for op in OPERATIONS}
    return {op: orjson.dumps(input_from_file(op, path)) for op, path in found.items()}


def main() -> int:
    """``./dev chaos --minutes N``: exit 0 when every invariant holds, 1 otherwise, 2 when the
    stack could not be set up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the loaded run (default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("redis-server") is None or not (PG_BIN / "initdb").exists():
        print("chaos: needs root (runuser), redis-server and PostgreSQL 15 binaries", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="opsgate-chaos-"))
    try:
        return asyncio.run(Chaos(args.minutes, root).run())
    except RuntimeError as exc:
        print(f"chaos: {exc} (logs: {root / 'logs'})", file=sys.stderr)
        args.keep = True
        return 2
    finally:
        if args.keep:
            print(f"chaos: logs kept in {root / 'logs'}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
