"""Several processes appending to one store produce one contiguous chain that verifies."""

from __future__ import annotations

import json
import subprocess
import sys

from sqlalchemy import Engine
from tests.ledger.ledger_helpers import ledger_rows

from opsgate.ledger.entry import decode_body
from opsgate.ledger.verify import verify

PROCESSES, APPENDS = 8, 500

WORKER = """
import asyncio, json, sys
from opsgate.clock import SystemClock
from opsgate.ledger.writer import Ledger
from opsgate.store.db import make_engine

url, name, appends = sys.argv[1], sys.argv[2], int(sys.argv[3])
engine = make_engine(url)
ledger = Ledger(engine, SystemClock())
ledger.start()

async def main():
    seqs = []
    for wave in range(0, appends, 20):  # waves of 20 concurrent appends: batches and contention
        done = await asyncio.gather(*(
            ledger.append("intent", {"request_id": f"{name}-{i}"})
            for i in range(wave, min(wave + 20, appends))
        ))
        seqs += [entry.seq for entry in done]
    return seqs

seqs = asyncio.run(main())
ledger.close()
print(json.dumps({"seqs": seqs, "transactions": ledger.transactions}))
"""


def test_processes_share_one_chain(db_url: str, engine: Engine) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, db_url, f"p{n}", str(APPENDS)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for n in range(PROCESSES)
    ]
    outputs = []
    for worker in workers:
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err
        outputs.append(json.loads(out))
    total = PROCESSES * APPENDS
    assert sorted(s for o in outputs for s in o["seqs"]) == list(range(total))
    assert all(o["transactions"] < APPENDS for o in outputs)
    rows = ledger_rows(engine)
    ids = {decode_body(body)["request_id"] for _, _, _, body in rows}
    assert ids == {f"p{n}-{i}" for n in range(PROCESSES) for i in range(APPENDS)}
    report = verify(engine)
    assert report.ok and report.entries == total and report.head_seq == total - 1
