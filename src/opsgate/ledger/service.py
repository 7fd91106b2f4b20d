"""Checkpoints over the stored ledger: create, sign and store them; read leaves for proofs.

:func:`create_checkpoint` extends the tree of the latest stored checkpoint (its frontier is
checked against its signed root first) with the entries appended since, re-checking their chain
hashes and links, signs the new tree head and stores it with one conditional INSERT that only
succeeds when no checkpoint of that size or larger exists — so no size is ever signed twice and
checkpoints only grow, whichever process or replica gets there first.

Every value read back is type-checked (``models.stored_*``): a column rewritten with another type
raises :class:`StoredValueError` (a :class:`LedgerError`) naming the row and the column.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import Engine, and_, exists, func, insert, literal, select

from opsgate.clock import Clock
from opsgate.ledger.checkpoint import Checkpoint, Signer
from opsgate.ledger.entry import CHAIN_DOMAIN, GENESIS_PREV_HASH
from opsgate.ledger.errors import LedgerError
from opsgate.ledger.merkle import CompactRange, leaf_hash
from opsgate.ledger.models import ledger_checkpoints, stored_bytes, stored_int
from opsgate.store.models import ledger_entries
from opsgate.store.db import begin_write

MAX_ENTRIES_PER_CHECKPOINT = 1_000_000


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A checkpoint row: ``size`` leaves, 32-byte ``root``, the signed ``note`` bytes as stored."""

    size: int
    root: bytes
    note: bytes


def latest_checkpoint(engine: Engine) -> StoredCheckpoint | None:
    """The stored checkpoint with the largest size, or None."""
    with engine.connect() as conn:
        row = conn.execute(
            select(
                ledger_checkpoints.c.size, ledger_checkpoints.c.root_hash, ledger_checkpoints.c.note
            )
            .order_by(ledger_checkpoints.c.size.desc())
            .limit(1)
        ).first()
    return None if row is None else _checkpoint(row[0], row[1], row[2])


def checkpoint_of_size(engine: Engine, size: int) -> StoredCheckpoint | None:
    """The stored checkpoint of exactly ``size`` leaves, or None."""
    with engine.connect() as conn:
        row = conn.execute(
            select(ledger_checkpoints.c.root_hash, ledger_checkpoints.c.note).where(
                ledger_checkpoints.c.size == size
            )
        ).first()
    return None if row is None else _checkpoint(size, row[0], row[1])


def _checkpoint(size: object, root: object, note: object) -> StoredCheckpoint:
    """A checkpoint row's values, type-checked (StoredValueError naming the row and column)."""
    row = f"ledger_checkpoints row size={size!r:.40}"
    return StoredCheckpoint(stored_int(size, f"{row}, column size"),
                            stored_bytes(root, f"{row}, column root_hash", length=32),
                            stored_bytes(note, f"{row}, column note"))


def log_size(engine: Engine) -> int:
    """Number of entries (highest seq + 1; 0 when empty)."""
    with engine.connect() as conn:
        head = conn.execute(select(func.max(ledger_entries.c.seq))).scalar()
    return 0 if head is None else stored_int(head, "ledger_entries max(seq)") + 1


def leaf_hashes(engine: Engine, size: int) -> list[bytes]:
    """The RFC 9162 leaf hashes of entries ``0 .. size-1`` (LedgerError if the log is shorter)."""
    leaves = [leaf_hash(body) for _, _, _, body in _rows(engine, 0, size)]
    if len(leaves) != size:
        raise LedgerError(f"the log holds {len(leaves)} entries, not {size}")
    return leaves


def create_checkpoint(
    engine: Engine, signer: Signer, origin: str, clock: Clock
) -> StoredCheckpoint | None:
    """Sign and store a checkpoint of every entry now in the log; None when nothing is new or
    another process stored a checkpoint at least as large meanwhile.

    Raises LedgerError when the latest checkpoint's frontier does not give its signed root, or the
    new entries' chain hashes or links are broken: nothing is signed over a damaged log.
    """
    tree, head_hash = _resume(engine, signer)
    start = tree.size
    chain = hashlib.sha256(CHAIN_DOMAIN)
    for seq, prev_hash, entry_hash, body in _rows(
        engine, start, start + MAX_ENTRIES_PER_CHECKPOINT
    ):
        digest = chain.copy()
        digest.update(prev_hash)
        digest.update(body)
        if seq != tree.size or prev_hash != head_hash or digest.digest() != entry_hash:
            raise LedgerError(f"refusing to checkpoint: the chain is broken at seq {tree.size}")
        tree.append(leaf_hash(body))
        head_hash = entry_hash
    if tree.size == start:
        return None
    root = tree.root()
    note = signer.sign_checkpoint(Checkpoint(origin, tree.size, root))
    return _store(engine, StoredCheckpoint(tree.size, root, note), tree.frontier(), clock)


def _resume(engine: Engine, signer: Signer) -> tuple[CompactRange, bytes]:
    """The latest checkpoint's tree (frontier checked against its signed root) and the chain hash
    of its last entry; an empty tree and the genesis hash when there is no checkpoint yet."""
    with engine.connect() as conn:
        row = conn.execute(
            select(
                ledger_checkpoints.c.size, ledger_checkpoints.c.note, ledger_checkpoints.c.frontier
            )
            .order_by(ledger_checkpoints.c.size.desc())
            .limit(1)
        ).first()
        if row is None:
            return CompactRange(), GENESIS_PREV_HASH
        head_hash = conn.execute(
            select(ledger_entries.c.entry_hash).where(ledger_entries.c.seq == row[0] - 1)
        ).scalar()
    where = f"ledger_checkpoints row size={row[0]!r:.40}, column"
    size = stored_int(row[0], f"{where} size")
    signed = signer.verifier().open_checkpoint(stored_bytes(row[1], f"{where} note"))
    try:
        tree = CompactRange.restore(size, stored_bytes(row[2], f"{where} frontier"))
    except ValueError as exc:
        raise LedgerError(f"checkpoint {size}: {exc}") from None
    if signed.size != size or tree.root() != signed.root or head_hash is None:
        raise LedgerError(f"checkpoint {size} does not match its signed note or the log")
    return tree, stored_bytes(head_hash, f"ledger_entries row seq={size - 1}, column entry_hash")


def _store(
    engine: Engine, checkpoint: StoredCheckpoint, frontier: bytes, clock: Clock
) -> StoredCheckpoint | None:
    """INSERT ... SELECT ... WHERE NOT EXISTS (a checkpoint of this size or larger): atomic."""
    values = select(
        literal(checkpoint.size),
        literal(checkpoint.root),
        literal(checkpoint.note),
        literal(frontier),
        literal(clock.now()),
    ).where(~exists().where(ledger_checkpoints.c.size >= checkpoint.size))
    statement = (
        insert(ledger_checkpoints)
        .from_select(["size", "root_hash", "note", "frontier", "created_at"], values)
        .returning(ledger_checkpoints.c.size)
    )
    with begin_write(engine) as conn:
        inserted = conn.execute(statement).scalar()
    return checkpoint if inserted == checkpoint.size else None


def _rows(engine: Engine, start: int, end: int) -> Iterator[tuple[int, bytes, bytes, bytes]]:
    query = (
        select(
            ledger_entries.c.seq,
            ledger_entries.c.prev_hash,
            ledger_entries.c.entry_hash,
            ledger_entries.c.body,
        )
        .where(and_(ledger_entries.c.seq >= start, ledger_entries.c.seq < end))
        .order_by(ledger_entries.c.seq)
    )
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=10_000).execute(query)
        for seq, prev_hash, entry_hash, body in result:
            row = f"ledger_entries row seq={seq!r:.40}, column"
            yield (stored_int(seq, f"{row} seq"), stored_bytes(prev_hash, f"{row} prev_hash"),
                   stored_bytes(entry_hash, f"{row} entry_hash"), stored_bytes(body, f"{row} body"))
