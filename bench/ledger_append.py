"""Ledger append throughput at concurrency 1 and 64 (appends/s, entries per transaction).

    .venv/bin/python bench/ledger_append.py                      # a fresh SQLite file
    .venv/bin/python bench/ledger_append.py --synchronous NORMAL # SQLite without fsync per commit
    .venv/bin/python bench/ledger_append.py --url postgresql://postgres@127.0.0.1:5432/bench

Each concurrency level runs ``--seconds`` of back-to-back ``await ledger.append(...)`` calls with
an intent-shaped payload from that many tasks on one event loop. The PostgreSQL database must
exist; its ledger table is emptied first. Ends by verifying the chain it wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from opsgate.clock import SystemClock
from opsgate.ledger.guards import drop_triggers, install_triggers
from opsgate.ledger.verify import format_summary, verify
from opsgate.ledger.writer import Ledger
from opsgate.store.db import is_sqlite, make_engine, upgrade

PAYLOAD = {
    "user_id": "user-0001",
    "operation": "email-compose",
    "input_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "policy": ["anthropic/claude-sonnet-4-5", "deepseek/deepseek-chat"],
}


async def run(ledger: Ledger, concurrency: int, seconds: float) -> tuple[int, float, int]:
    """Appends made, elapsed seconds and transactions used by ``concurrency`` looping tasks."""
    deadline = time.perf_counter() + seconds
    start, tx0 = time.perf_counter(), ledger.transactions
    made = 0

    async def task(n: int) -> None:
        nonlocal made
        i = 0
        while time.perf_counter() < deadline:
            await ledger.append("intent", {**PAYLOAD, "request_id": f"c{concurrency}-{n}-{i}"})
            i += 1
            made += 1

    await asyncio.gather(*(task(n) for n in range(concurrency)))
    return made, time.perf_counter() - start, ledger.transactions - tx0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL (default: a new SQLite file)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    args = parser.parse_args()
    url = args.url or f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    upgrade(url)
    engine = make_engine(url, synchronous=args.synchronous)
    with engine.begin() as conn:  # the bench may empty its own store: lift the guards meanwhile
        drop_triggers(conn)
        conn.exec_driver_sql("DELETE FROM ledger_entries")
        install_triggers(conn)
    ledger = Ledger(engine, SystemClock())
    ledger.start()
    store = f"sqlite synchronous={args.synchronous}" if is_sqlite(url) else engine.dialect.name
    try:
        for concurrency in (1, 64):
            made, elapsed, transactions = asyncio.run(run(ledger, concurrency, args.seconds))
            print(f"{store:<24} concurrency={concurrency:<3} appends/s={made / elapsed:8.0f} "
                  f"entries/transaction={made / max(transactions, 1):6.1f} "
                  f"mean latency={elapsed / made * concurrency * 1000:6.2f} ms")
    finally:
        ledger.close()
    print(format_summary(verify(engine)))
    engine.dispose()


if __name__ == "__main__":
    main()
