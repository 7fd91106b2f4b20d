"""``opsgate demo``: the README's first command.

Starts ``opsgate serve --sandbox`` in this process on a free loopback port, creates a demo user and
an access token, calls all nine operations over real HTTP with the example inputs, prints one table
row per call (operation, provider, status, latency, tokens, cost), then verifies the ledger.
"""

from __future__ import annotations

import asyncio
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from rich.console import Console
from rich.console import JustifyMethod
from rich.table import Table

from opsgate.app import open_app
from opsgate.clock import SystemClock
from opsgate.config import Settings
from opsgate.localserver import serve_in_thread
from opsgate.ledger.verify import format_summary, verify
from opsgate.operations import OPERATIONS
from opsgate.operations.io import input_from_file
from opsgate.runtime import Runtime
from opsgate.security.users import seed_user
from opsgate.store.db import open_database

DEMO_USER = "demo-user"
console = Console(width=None if sys.stdout.isatty() else 120)


def run_demo(settings: Settings, examples: Path, port: int = 0) -> int:
    """Run the demo; returns the process exit code (0 when every call succeeded and the ledger verifies)."""
    engine = open_database(settings)
    role = seed_user(engine, SystemClock(), DEMO_USER)
    bodies = {op_id: _example_body(op_id, examples) for op_id in OPERATIONS}
    server = serve_in_thread(port=port, open_app=partial(open_app, settings))  # a start-up failure raises here
    try:
        runtime: Runtime = server.app.state.runtime  # type: ignore[attr-defined]  # the FastAPI app open_app built
        token = runtime.tokens.issue(DEMO_USER, role)  # its key resolved at start-up (an op:// reference)
        rows = asyncio.run(_call_all(server.base_url, token, bodies))
    finally:
        server.stop()
    console.print(_table(rows))
    report = verify(engine)
    console.print(("[green]" if report.ok else "[red]") + "ledger: " + format_summary(report))
    engine.dispose()
    return 0 if report.ok and all(r["status"] == 200 for r in rows) else 1


def _example_body(op_id: str, examples: Path) -> bytes:
    matches = sorted(examples.glob(f"{op_id}.*"))
    if not matches:
        raise SystemExit(f"no example input for {op_id} in {examples}/")
    return orjson.dumps(input_from_file(op_id, matches[0], None))


async def _call_all(base_url: str, token: str, bodies: dict[str, bytes]) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(base_url, headers=headers) as http:
        return [await _call(http, op_id, body) for op_id, body in bodies.items()]


async def _call(http: aiohttp.ClientSession, op_id: str, body: bytes) -> dict[str, Any]:
    started = time.perf_counter()
    async with http.post(f"/v1/operations/{op_id}", data=body) as resp:
        payload = orjson.loads(await resp.read())
    row = {"operation": op_id, "status": resp.status, "latency_ms": (time.perf_counter() - started) * 1000}
    if resp.status == 200:
        usage = payload["usage"]
        row.update(
            provider=f"{payload['provider']}/{payload['model']}",
            tokens=f"{sum(usage[k] for k in usage if k != 'reasoning_tokens')}",
            cost=f"${payload['cost_micro_usd'] / 1_000_000:.6f}",
        )
    else:
        row.update(provider="-", tokens="-", cost=payload.get("code", "?"))
    return row


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="opsgate demo: nine operations over HTTP (sandbox providers)")
    columns: list[tuple[str, JustifyMethod]] = [("operation", "left"), ("provider/model", "left"), ("status", "right"),
                          ("latency ms", "right"), ("tokens", "right"), ("cost USD", "right")]
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for r in rows:
        table.add_row(r["operation"], r["provider"], str(r["status"]), f"{r['latency_ms']:.1f}",
                      r["tokens"], r["cost"])
    return table
