"""The ledger's own tables beside ``ledger_entries`` (registered on ``opsgate.store.models.metadata``).

- ``ledger_checkpoints``: every signed checkpoint, its note stored byte for byte and re-served as
  is, with the tree's frontier (``merkle.CompactRange``) so the next checkpoint only hashes
  new entries; ``size`` is the primary key, so no size is ever signed twice.
- ``ledger_anchor_records``: one row per checkpoint posted to an anchor, with the anchor's
  reference (the Discord message id, the anchor file's name).
- ``ledger_anchor_state``: per anchor, the largest size anchored; advanced only by
  compare-and-swap (``UPDATE ... WHERE anchored_size = <the value read>``).
- ``ledger_recoveries``: one row per intent the recovery job closed as ``interrupted``; the
  primary key on ``request_id`` stops two recovery jobs from closing one intent twice.

Checkpoints, anchor records and recoveries are append-only like the entries (see ``guards``).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, LargeBinary, String, Table

from opsgate.store.models import metadata
from opsgate.store.types import UTCDateTime

ledger_checkpoints = Table(
    "ledger_checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root_hash", LargeBinary(32), nullable=False),
    Column("note", LargeBinary, nullable=False),
    Column("frontier", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

ledger_anchor_records = Table(
    "ledger_anchor_records",
    metadata,
    Column("anchor", String(64), primary_key=True),
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("reference", String(256), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

ledger_anchor_state = Table(
    "ledger_anchor_state",
    metadata,
    Column("anchor", String(64), primary_key=True),
    Column("anchored_size", BigInteger, nullable=False),
)

ledger_recoveries = Table(
    "ledger_recoveries",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("intent_seq", BigInteger, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)
