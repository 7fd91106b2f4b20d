"""Full ledger verification speed: entries/s and seconds for ``--entries`` (default 1,000,000).

    .venv/bin/python bench/ledger_verify.py                     # a fresh SQLite file
    .venv/bin/python bench/ledger_verify.py --url postgresql://postgres@127.0.0.1:5432/bench

Writes intent/result pairs shaped like the pipeline's (bodies of ~300 bytes) straight into
``ledger_entries`` with the product's encoder and chain (much faster than appending one by one),
signs a checkpoint every 1,000 entries like the scheduler would, then times ``verify`` with
``--workers`` processes and with one. Prints wall and CPU seconds (CPU / cores is what an idle
machine would take; the load average shows how shared the machine was) — every
body decoded and checked, every chain hash and Merkle leaf recomputed, every checkpoint root
compared. The PostgreSQL database must exist and be migrated empty (or is emptied first).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, insert

from opsgate.ledger.checkpoint import Checkpoint, Signer, generate_signer_key
from opsgate.ledger.entry import chain_entry, encode_body, format_ts
from opsgate.ledger.guards import drop_triggers, install_triggers
from opsgate.ledger.merkle import CompactRange, leaf_hash
from opsgate.ledger.models import ledger_checkpoints
from opsgate.ledger.verify import format_summary, verify
from opsgate.store.db import make_engine, upgrade
from opsgate.store.models import ledger_entries

ORIGIN = "opsgate.bench/ledger"


def body_for(seq: int, ts: str) -> bytes:
    """An intent (even seq) or result (odd seq) body of the pipeline's shape."""
    request_id = f"req-{seq // 2:012d}"
    if seq % 2 == 0:
        payload = {
            "request_id": request_id,
            "user_id": "user-0001",
            "operation": "email-compose",
            "input_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "policy": ["anthropic/claude-sonnet-4-5", "deepseek/deepseek-chat"],
        }
        return encode_body(seq, ts, "intent", payload)
    payload = {
        "request_id": request_id,
        "intent_seq": seq - 1,
        "status": "ok",
        "error_code": None,
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "input_tokens": 812,
        "output_tokens": 240,
        "cache_write_tokens": 0,
        "cache_read_tokens": 0,
        "cost_micro_usd": 6036,
    }
    return encode_body(seq, ts, "result", payload)


def fill(engine: Engine, total: int, signer: Signer, every: int) -> None:
    """Insert ``total`` chained entries and a signed checkpoint every ``every`` entries."""
    ts = format_ts(datetime.now(UTC))
    prev, rows, checkpoints, tree = bytes(32), [], [], CompactRange()
    with engine.begin() as conn:
        drop_triggers(conn)
        conn.execute(ledger_entries.delete())
        conn.execute(ledger_checkpoints.delete())
        for seq in range(total):
            entry = chain_entry(seq, prev, body_for(seq, ts))
            rows.append(
                {"seq": seq, "prev_hash": prev, "entry_hash": entry.entry_hash, "body": entry.body}
            )
            prev = entry.entry_hash
            tree.append(leaf_hash(entry.body))
            if tree.size % every == 0 or tree.size == total:
                root = tree.root()
                note = signer.sign_checkpoint(Checkpoint(ORIGIN, tree.size, root))
                checkpoints.append(
                    {
                        "size": tree.size,
                        "root_hash": root,
                        "note": note,
                        "frontier": tree.frontier(),
                        "created_at": datetime.now(UTC),
                    }
                )
            if len(rows) == 20_000:
                conn.execute(insert(ledger_entries), rows)
                rows = []
        if rows:
            conn.execute(insert(ledger_entries), rows)
        conn.execute(insert(ledger_checkpoints), checkpoints)
        install_triggers(conn)


def cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (the verify workers)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL (default: a new SQLite file)")
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=1_000, help="entries per checkpoint")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    url = args.url or f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    upgrade(url)
    engine = make_engine(url)
    signer = Signer(generate_signer_key(ORIGIN))
    start = time.perf_counter()
    fill(engine, args.entries, signer, args.every)
    print(f"wrote {args.entries:,} entries in {time.perf_counter() - start:.1f} s")
    for workers in (args.workers, 1):
        cpu0, start = cpu_seconds(), time.perf_counter()
        report = verify(engine, verifier=signer.verifier(), workers=workers)
        elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
        print(format_summary(report))
        print(
            f"{engine.dialect.name:<10} workers={workers} verify {report.entries:,} entries: "
            f"{elapsed:.2f} s wall ({report.entries / elapsed:,.0f} entries/s), {cpu:.2f} s CPU "
            f"in all processes, load average {os.getloadavg()[0]:.1f}"
        )
    engine.dispose()


if __name__ == "__main__":
    main()
