"""Verifying the whole chain from the stored bytes.

:func:`verify` streams ``ledger_entries`` in ``seq`` order (a server-side cursor on PostgreSQL,
SQLite's incremental cursor, ``batch_size`` rows at a time) inside one read transaction, so it
checks one consistent snapshot with memory bounded by the batch size plus the set of intents
still waiting for their result. For each row, in this order:

``seq_gap``       the row's seq is not the previous seq + 1 (the first row must be 0); the failure
                  names the first missing seq.
``bad_body``      the body is not the canonical v1 JSON the writer produces (``entry.decode_body``).
``seq_mismatch``  the body's own ``seq`` differs from the row's (e.g. two bodies swapped).
``hash_mismatch`` ``SHA-256(domain || prev_hash || body)`` differs from the stored ``entry_hash``.
``link_mismatch`` ``prev_hash`` differs from the previous row's ``entry_hash`` (genesis: zeros).

The first failure stops the scan: nothing after it can be trusted. A ``ts`` earlier than the one
before it is a ``clock_regression`` warning, not a failure (the writer clamps, so a regression means
another writer's clock or a hand-made entry). Truncation of the newest entries cannot be seen from
the chain alone; signed checkpoints (a later issue) close that gap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError

from opsgate.ledger.entry import FIRST_SEQ, GENESIS_PREV_HASH, chain_hash, decode_body
from opsgate.ledger.errors import LedgerError, LedgerIOError
from opsgate.store.models import ledger_entries

MAX_KEPT_WARNINGS = 100
_ROWS = select(
    ledger_entries.c.seq,
    ledger_entries.c.prev_hash,
    ledger_entries.c.entry_hash,
    ledger_entries.c.body,
).order_by(ledger_entries.c.seq)


@dataclass(frozen=True, slots=True)
class Finding:
    """A failure or warning at ``seq``; ``reason`` is a stable token, ``detail`` free text."""

    seq: int
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of :func:`verify`.

    ``entries``: rows checked (on failure, including the failing row). ``head_seq`` and
    ``head_hash`` (32 bytes): the last entry that verified, None for an empty ledger or a failure on
    the first row. ``failure``: the first failure, None when ``ok``. ``warnings``: the first
    ``MAX_KEPT_WARNINGS`` warnings; ``warning_count``: all of them. ``incomplete_intents``: intent
    entries with no result entry carrying the same ``request_id`` (not tampering: a crash or an
    operation still running).
    """

    ok: bool
    entries: int
    head_seq: int | None
    head_hash: bytes | None
    failure: Finding | None
    warnings: tuple[Finding, ...]
    warning_count: int
    incomplete_intents: int


class _Checker:
    """The per-row checks, fed rows in seq order; stops accepting rows after the first failure."""

    def __init__(self) -> None:
        self.entries = 0
        self.head_seq: int | None = None
        self.head_hash = GENESIS_PREV_HASH
        self.head_ts = ""
        self.failure: Finding | None = None
        self.warnings: list[Finding] = []
        self.warning_count = 0
        self.open_intents: dict[str, int] = {}

    def feed(self, seq: int, prev_hash: bytes, entry_hash: bytes, body: bytes) -> bool:
        """Check one row; False once a failure has been recorded."""
        self.entries += 1
        self.failure = self._check(seq, prev_hash, entry_hash, body)
        return self.failure is None

    def _check(self, seq: int, prev_hash: bytes, entry_hash: bytes, body: bytes) -> Finding | None:
        expected = FIRST_SEQ if self.head_seq is None else self.head_seq + 1
        if seq != expected:
            return Finding(expected, "seq_gap", f"entry {expected} is missing (next row is {seq})")
        try:
            obj = decode_body(body)
        except LedgerError as exc:
            return Finding(seq, "bad_body", exc.detail)
        if obj["seq"] != seq:
            return Finding(seq, "seq_mismatch", f"row {seq} holds the body of entry {obj['seq']}")
        if chain_hash(prev_hash, body) != entry_hash:
            return Finding(seq, "hash_mismatch", "stored entry_hash does not match the body")
        if prev_hash != self.head_hash:
            return Finding(seq, "link_mismatch", "prev_hash is not the previous entry's hash")
        self._accept(seq, entry_hash, obj)
        return None

    def _accept(self, seq: int, entry_hash: bytes, obj: dict[str, Any]) -> None:
        if obj["ts"] < self.head_ts:  # fixed-width UTC text: string order is time order
            self._warn(Finding(seq, "clock_regression", f"ts {obj['ts']} < {self.head_ts}"))
        request_id = obj.get("request_id")
        if obj["kind"] == "intent" and isinstance(request_id, str):
            self.open_intents[request_id] = seq
        elif obj["kind"] == "result" and isinstance(request_id, str):
            self.open_intents.pop(request_id, None)
        self.head_seq, self.head_hash, self.head_ts = seq, entry_hash, obj["ts"]

    def _warn(self, finding: Finding) -> None:
        self.warning_count += 1
        if len(self.warnings) < MAX_KEPT_WARNINGS:
            self.warnings.append(finding)

    def report(self) -> VerifyReport:
        return VerifyReport(
            ok=self.failure is None,
            entries=self.entries,
            head_seq=self.head_seq,
            head_hash=None if self.head_seq is None else self.head_hash,
            failure=self.failure,
            warnings=tuple(self.warnings),
            warning_count=self.warning_count,
            incomplete_intents=len(self.open_intents),
        )


def verify(
    engine: Engine,
    *,
    batch_size: int = 10_000,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Recompute the chain of ``engine``'s ledger from the stored bytes (see module docstring).

    ``progress`` (optional) is called with the number of rows checked after each batch.
    Raises :class:`LedgerIOError` if the ledger cannot be read (no table, database unreachable).
    """
    checker = _Checker()
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(
                _ROWS
            )
            for batch in result.partitions():
                if not all(
                    checker.feed(r[0], bytes(r[1]), bytes(r[2]), bytes(r[3])) for r in batch
                ):
                    break
                if progress is not None:
                    progress(checker.entries)
            result.close()
    except DBAPIError as exc:
        raise LedgerIOError(f"could not read the ledger: {type(exc.orig).__name__}") from exc
    return checker.report()


def format_summary(report: VerifyReport) -> str:
    """One line: ``OK entries=N head=SEQ hash=HEX warnings=W incomplete=I`` or
    ``FAIL seq=N reason=R: detail`` (``head=none hash=none`` for an empty ledger)."""
    if report.failure is not None:
        failure = report.failure
        return f"FAIL seq={failure.seq} reason={failure.reason}: {failure.detail}"
    head = "none" if report.head_seq is None else str(report.head_seq)
    digest = "none" if report.head_hash is None else report.head_hash.hex()
    return (
        f"OK entries={report.entries} head={head} hash={digest} "
        f"warnings={report.warning_count} incomplete={report.incomplete_intents}"
    )
