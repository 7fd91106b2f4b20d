"""The shared :data:`metadata`, the operation log and the ledger's entries. Names follow the seed
(``ai_operation_log``); every timestamp is a :class:`~opsgate.store.types.UTCDateTime`.

Each domain defines its own tables once, in its ``models.py`` on this :data:`metadata` (``users``
lives in :mod:`opsgate.security.models`).

No table holds prompt text, email content or secret values: the operation log holds counts,
ids and costs; the ledger holds canonical JSON entries with hashes and ids only.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    false,
)

from opsgate.store.types import UTCDateTime

metadata = MetaData()

ai_operation_log = Table(
    "ai_operation_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, unique=True),
    Column("user_id", String(128), nullable=False),
    Column("operation", String(64), nullable=False),
    Column("provider", String(32)),
    Column("model", String(128)),
    Column("served_model", String(128)),  # as reported, checked by routing.served (issue 13); model = requested
    Column("variant", String(48)),  # the variant that served the call (issue 17, migration 0009)
    Column("repaired", Boolean),  # the answer needed the schema repair request
    Column("shadow", Boolean, nullable=False, default=False, server_default=false()),  # migration 0011
    Column("degraded", Boolean),  # a budget sent the call to a cheaper target (migration 0012)
    Column("status", String(16), nullable=False),
    Column("error_code", String(64)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("latency_ms", Float, nullable=False),
    Column("provider_latency_ms", Float),
    Column("input_tokens", Integer, nullable=False, default=0),
    Column("output_tokens", Integer, nullable=False, default=0),
    Column("cache_write_tokens", Integer, nullable=False, default=0),
    Column("cache_read_tokens", Integer, nullable=False, default=0),
    Column("reasoning_tokens", Integer, nullable=False, default=0),
    Column("cost_micro_usd", BigInteger, nullable=False, default=0),
    Column("created_at", UTCDateTime(), nullable=False),
)
Index("ix_ai_operation_log_created_at", ai_operation_log.c.created_at)
Index("ix_ai_operation_log_operation_created", ai_operation_log.c.operation, ai_operation_log.c.created_at)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("prev_hash", LargeBinary(32), nullable=False, unique=True),
    Column("entry_hash", LargeBinary(32), nullable=False, unique=True),
    Column("body", LargeBinary, nullable=False),
)
