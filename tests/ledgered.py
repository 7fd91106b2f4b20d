"""Reading a database's ledger back in tests: :func:`entries` of one kind, as decoded bodies."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from opsgate.ledger.entry import decode_body
from opsgate.store.models import ledger_entries

ENVELOPE = ("v", "seq", "ts", "kind")


def entries(engine: Engine, kind: str) -> list[dict[str, Any]]:
    """The payloads (the body without ``v``, ``seq``, ``ts`` and ``kind``) of every ``kind``
    entry, in ``seq`` order."""
    with engine.connect() as conn:
        bodies = [decode_body(bytes(b)) for (b,) in
                  conn.execute(select(ledger_entries.c.body).order_by(ledger_entries.c.seq))]
    return [{k: v for k, v in b.items() if k not in ENVELOPE} for b in bodies if b["kind"] == kind]
