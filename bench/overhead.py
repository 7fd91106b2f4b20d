"""Gateway overhead: a direct call to the sandbox vs the same call through ``opsgate serve``.

One run, one client (aiohttp, no SDK), one sandbox process, one gateway process (one uvicorn
worker, SQLite ledger and operation log on, synchronous=FULL unless --synchronous NORMAL). For concurrency 1 and 32 it prints
p50/p99 latency of both paths, the added latency, and throughput in operations per second.

    ./dev bench overhead [--requests 2000] [--operation email-classify]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from opsgate.clock import SystemClock
from opsgate.config import Settings
from opsgate.operations import get_operation
from opsgate.operations.io import input_from_file
from opsgate.providers.anthropic import ANTHROPIC_VERSION, messages_payload
from opsgate.routing.policy import policies_for
from opsgate.security.auth import TokenService

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 60) -> None:
    """Wait until ``url`` answers GET with a status below 500; SystemExit after ``timeout_s``."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


async def measure(url: str, body: bytes, headers: dict[str, str], n: int, concurrency: int) -> dict:
    """POST ``body`` to ``url`` ``n`` times from ``concurrency`` workers on one aiohttp session,
    after 50 warm-up requests; ``{"p50", "p99"}`` in ms and ``"rps"``. SystemExit on a non-200."""
    latencies: list[float] = []
    queue = iter(range(n))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            for _ in queue:
                t0 = time.perf_counter()
                async with http.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise SystemExit(f"{url} answered {r.status}")
                latencies.append((time.perf_counter() - t0) * 1000)

        for _ in range(min(50, n)):  # warm-up outside the measurement
            async with http.post(url, data=body, headers=headers) as r:
                await r.read()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "p50": statistics.median(latencies),
        "p99": latencies[int(len(latencies) * 0.99) - 1],
        "rps": n / elapsed,
    }


OPSGATE = [sys.executable, "-m", "opsgate.cli"]
BENCH_USER = "bench-user"


def prepare_gateway(env: dict[str, str], operation: str, *, governance: bool) -> None:
    """Enable ``operation`` for every user in the gateway's database (``env``). With
    ``governance``: four rate limits (``env`` gains them) and three applicable day budgets
    (global, the bench user, the operation), all so high that none refuses."""
    if governance:
        env.update({f"OPSGATE_RATE_LIMIT_{k}": "100000000" for k in
                    ("USER_RPM", "USER_TPM", "USER_OPERATION_RPM", "USER_OPERATION_TPM")})
    subprocess.run([*OPSGATE, "toggles", "set", operation, "--enable", "--percent", "100",
                    "--no-opt-in", "--reason", "benchmark"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    for scope in (["--global"], ["--user", BENCH_USER], ["--operation", operation]) if governance else ():
        subprocess.run([*OPSGATE, "budgets", "set", *scope, "--period", "day", "--limit-usd", "1000000"],
                       env=env, check=True, stdout=subprocess.DEVNULL)


def start_gateway(env: dict[str, str], port: int, workers: int) -> subprocess.Popen[bytes]:
    """``opsgate serve`` on ``port`` with ``workers`` worker processes (its stderr discarded)."""
    return subprocess.Popen([*OPSGATE, "serve", "--port", str(port), "--workers", str(workers)],
                            env=env, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--operation", default="email-compose")
    parser.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"],
                        help="SQLite synchronous mode of the gateway's ledger commits")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    parser.add_argument("--database-url", help="the gateway's database (default: a fresh SQLite file)")
    parser.add_argument("--governance", action="store_true",
                        help="three applicable budgets and four rate limits on (high limits: none refuses)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="opsgate-bench-"))
    sandbox_port, gateway_port = free_port(), free_port()
    key = "sk-ant-api03-" + secrets.token_urlsafe(40)
    env = {
        **os.environ,
        "OPSGATE_DATABASE_URL": args.database_url or f"sqlite:///{tmp / 'bench.db'}",
        "OPSGATE_JWT_SECRET": secrets.token_urlsafe(48),
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{sandbox_port}/anthropic",
        "ANTHROPIC_API_KEY": key,
        "OPSGATE_LEDGER_SYNCHRONOUS": args.synchronous,
    }
    prepare_gateway(env, args.operation, governance=args.governance)
    procs = [
        subprocess.Popen([*OPSGATE, "sandbox", "--port", str(sandbox_port)], env=env,
                         stdout=subprocess.DEVNULL),
        start_gateway(env, gateway_port, args.workers),
    ]
    try:
        wait_http(f"http://127.0.0.1:{sandbox_port}/_sandbox/stats")
        wait_http(f"http://127.0.0.1:{gateway_port}/healthz")
        _run(args, env, key, sandbox_port, gateway_port)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


def _run(args: argparse.Namespace, env: dict[str, str], key: str, sandbox_port: int, gateway_port: int) -> None:
    op = get_operation(args.operation)
    example = next((REPO / "examples").glob(f"{op.id}.*"))
    payload = input_from_file(op.id, example, None)
    settings = Settings(jwt_secret=env["OPSGATE_JWT_SECRET"])
    model = policies_for(settings)[op.id].chain[0].model
    direct_body = orjson.dumps(messages_payload(op.prepare(op.Input.model_validate(payload)).request, model))
    direct = (
        f"http://127.0.0.1:{sandbox_port}/anthropic/v1/messages",
        direct_body,
        {"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION, "content-type": "application/json"},
    )
    token = TokenService(settings, SystemClock()).issue(BENCH_USER, "user")
    gateway = (
        f"http://127.0.0.1:{gateway_port}/v1/operations/{op.id}",
        orjson.dumps(payload),
        {"Authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    print(f"opsgate overhead: {op.id}, {args.requests} requests per cell, sandbox and gateway in "
          f"separate processes, ledger + ai_operation_log on "
          f"({args.database_url.split(':')[0] if args.database_url else 'SQLite'}, synchronous={args.synchronous}), "
          f"budgets and rate limits {'on' if args.governance else 'off'}, {args.workers} gateway worker(s)")
    print(f"{'conc':>4} {'path':>8} {'p50 ms':>8} {'p99 ms':>8} {'ops/s':>8}")
    for concurrency in (1, 32):
        d = asyncio.run(measure(*direct, args.requests, concurrency))
        g = asyncio.run(measure(*gateway, args.requests, concurrency))
        for name, r in (("direct", d), ("opsgate", g)):
            print(f"{concurrency:>4} {name:>8} {r['p50']:>8.3f} {r['p99']:>8.3f} {r['rps']:>8.0f}")
        print(f"{concurrency:>4} {'added':>8} {g['p50'] - d['p50']:>8.3f} {g['p99'] - d['p99']:>8.3f} "
              f"{g['rps'] / d['rps']:>7.2f}x")


if __name__ == "__main__":
    main()
