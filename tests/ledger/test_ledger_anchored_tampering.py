"""Tampering that only signed, anchored checkpoints can see — each found at the right seq.

Each test writes 8 entries (intent/result pairs), checkpoints at sizes 4 and 8, anchors both in
a directory outside the database, then tampers as the database's owner would.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import Engine
from tests.ledger.ledger_helpers import execute, ledger_rows

from opsgate.clock import ManualClock
from opsgate.ledger.anchors import DirectoryAnchor, publish
from opsgate.ledger.checkpoint import Checkpoint, Signer, generate_signer_key
from opsgate.ledger.entry import chain_entry, decode_body
from opsgate.ledger.service import create_checkpoint
from opsgate.ledger.verify import format_summary, verify
from opsgate.ledger.writer import Ledger

ORIGIN = "opsgate.test/ledger"


@pytest.fixture
def signer() -> Signer:
    return Signer(generate_signer_key(ORIGIN))


@pytest.fixture
def anchor(tmp_path: Path) -> DirectoryAnchor:
    return DirectoryAnchor(tmp_path / "anchors")


def fill(ledger: Ledger, start: int, pairs: int) -> None:
    for i in range(start, start + pairs):
        intent = ledger.append_sync("intent", {"request_id": f"req-{i}", "user_id": "alice"})
        ledger.append_sync("result", {"request_id": f"req-{i}", "intent_seq": intent.seq,
                                      "status": "ok"})


@pytest.fixture
async def anchored(engine: Engine, ledger: Ledger, clock: ManualClock, signer: Signer,
                   anchor: DirectoryAnchor) -> DirectoryAnchor:
    for start in (0, 2):
        fill(ledger, start, 2)
        assert create_checkpoint(engine, signer, ORIGIN, clock) is not None
    assert await publish(engine, anchor, clock) == 8
    return anchor


def check(engine: Engine, signer: Signer, anchor: DirectoryAnchor) -> tuple[int, str]:
    report = verify(engine, verifier=signer.verifier(), anchored=anchor.read())
    assert not report.ok and format_summary(report).startswith("FAIL ")
    parallel = verify(engine, verifier=signer.verifier(), anchored=anchor.read(), batch_size=2,
                      workers=2)  # batches of 2 joined across processes: the same finding
    assert parallel.failure == report.failure
    return report.failure.seq, report.failure.reason


async def test_intact_anchored_ledger(engine: Engine, signer: Signer, anchored: DirectoryAnchor,
                                      ledger: Ledger) -> None:
    ledger.append_sync("intent", {"request_id": "late"})
    report = verify(engine, verifier=signer.verifier(), anchored=anchored.read())
    assert report.ok
    assert (report.entries, report.checkpoints, report.anchored_size, report.unanchored) == (9, 2, 8, 1)
    assert "checkpoints=2 anchored=8 unanchored=1 warnings=0 incomplete=1" in format_summary(report)


async def test_whole_chain_recomputed_after_an_edit_is_caught_by_the_anchor(
    engine: Engine, signer: Signer, anchored: DirectoryAnchor
) -> None:
    rows = ledger_rows(engine)
    prev = rows[4][2]
    for seq, _, _, body in rows[5:]:
        if seq == 5:
            body = body.replace(b'"status":"ok"', b'"status":"no"')
        entry = chain_entry(seq, prev, body)
        execute(engine, "UPDATE ledger_entries SET body=:b, prev_hash=:p, entry_hash=:h WHERE seq=:s",
                b=body, p=prev, h=entry.entry_hash, s=seq)
        prev = entry.entry_hash
    assert verify(engine).ok is False  # the stored checkpoints alone already disagree
    seq, reason = check(engine, signer, anchored)
    assert (seq, reason) == (4, "root_mismatch")  # the edit lies in 4..7 (checkpoints at 4 and 8)


async def test_truncated_tail_below_a_checkpoint(engine: Engine, signer: Signer,
                                                 anchored: DirectoryAnchor) -> None:
    execute(engine, "DELETE FROM ledger_entries WHERE seq >= 6")
    assert verify(engine, verifier=signer.verifier()).failure.reason == "truncated"
    assert check(engine, signer, anchored) == (6, "truncated")


async def test_database_restored_from_an_older_backup(
    engine: Engine, signer: Signer, anchored: DirectoryAnchor
) -> None:
    """Entries 4.. and the checkpoint of size 8 are gone from the database, but not the anchor."""
    execute(engine, "DELETE FROM ledger_entries WHERE seq >= 4")
    execute(engine, "DELETE FROM ledger_checkpoints WHERE size = 8")
    execute(engine, "DELETE FROM ledger_anchor_records WHERE size = 8")
    assert verify(engine, verifier=signer.verifier()).ok  # undetectable without the anchor
    seq, reason = check(engine, signer, anchored)
    assert (seq, reason) == (4, "rolled_back")


async def test_forged_checkpoint_signature(engine: Engine, signer: Signer,
                                           anchored: DirectoryAnchor) -> None:
    mallory = Signer(generate_signer_key(ORIGIN))
    rows = ledger_rows(engine)
    from opsgate.ledger.merkle import leaf_hash, root_of

    forged = mallory.sign_checkpoint(Checkpoint(ORIGIN, 8, root_of([leaf_hash(r[3]) for r in rows])))
    execute(engine, "UPDATE ledger_checkpoints SET note = :n WHERE size = 8", n=forged)
    seq, reason = check(engine, signer, anchored)
    assert (seq, reason) == (7, "bad_signature")


async def test_forged_anchor_file(engine: Engine, signer: Signer, anchored: DirectoryAnchor) -> None:
    target = anchored.path / f"{4:020d}.checkpoint"
    target.write_bytes(target.read_bytes().replace(b"\n4\n", b"\n5\n"))
    assert check(engine, signer, anchored) == (4, "bad_signature")  # it now claims size 5


async def test_inserted_entry_with_a_valid_chain_is_caught(
    engine: Engine, signer: Signer, anchored: DirectoryAnchor
) -> None:
    """An entry slipped in at seq 2 and everything after renumbered and rehashed: the chain is
    perfect again, the anchored tree is not."""
    rows = ledger_rows(engine)
    bodies = [r[3] for r in rows]
    bodies.insert(2, bodies[0].replace(b'"request_id":"req-0"', b'"request_id":"req-x"'))
    execute(engine, "DELETE FROM ledger_entries")
    prev = bytes(32)
    for seq, body in enumerate(bodies):
        obj = decode_body(body)
        body = body.replace(f'"seq":{obj["seq"]},'.encode(), f'"seq":{seq},'.encode())
        entry = chain_entry(seq, prev, body)
        execute(engine, "INSERT INTO ledger_entries VALUES (:s, :p, :h, :b)",
                s=seq, p=prev, h=entry.entry_hash, b=body)
        prev = entry.entry_hash
    assert check(engine, signer, anchored) == (0, "root_mismatch")


async def test_anchor_directory_never_rewrites(anchored: DirectoryAnchor) -> None:
    name = await anchored.publish(4, (anchored.path / f"{4:020d}.checkpoint").read_bytes())
    assert name == f"{4:020d}.checkpoint"
    with pytest.raises(Exception, match="different contents"):
        await anchored.publish(4, b"other\n")


async def test_checkpoints_only_grow_and_are_never_resigned(
    engine: Engine, ledger: Ledger, clock: ManualClock, signer: Signer, anchored: DirectoryAnchor
) -> None:
    assert create_checkpoint(engine, signer, ORIGIN, clock) is None  # nothing new: no re-signing
    notes = [p.read_bytes() for p in sorted(anchored.path.iterdir())]
    fill(ledger, 4, 1)
    made = create_checkpoint(engine, signer, ORIGIN, clock)
    assert made is not None and made.size == 10
    assert [p.read_bytes() for p in sorted(anchored.path.iterdir())] == notes
    shutil.rmtree(anchored.path)
    assert await publish(engine, anchored, clock) == 10  # CAS moved from 8 to 10 only
    assert [p.name for p in sorted(anchored.path.iterdir())] == [f"{10:020d}.checkpoint"]


async def test_checkpointing_refuses_a_broken_chain(
    engine: Engine, ledger: Ledger, clock: ManualClock, signer: Signer, anchored: DirectoryAnchor
) -> None:
    fill(ledger, 4, 1)
    execute(engine, "UPDATE ledger_entries SET entry_hash = :h WHERE seq = 9", h=b"\x02" * 32)
    with pytest.raises(Exception, match="chain is broken at seq 9"):
        create_checkpoint(engine, signer, ORIGIN, clock)


def test_parallel_batches_check_unaligned_checkpoints(
    engine: Engine, ledger: Ledger, clock: ManualClock, signer: Signer
) -> None:
    for size in (7, 19, 33, 50):
        while ledger.entries < size:
            ledger.append_sync("intent", {"request_id": f"r{ledger.entries}"})
        assert create_checkpoint(engine, signer, ORIGIN, clock).size == size
    serial = verify(engine, verifier=signer.verifier(), workers=1)
    parallel = verify(engine, verifier=signer.verifier(), batch_size=4, workers=2)
    assert serial.ok and parallel.ok and serial.checkpoints == parallel.checkpoints == 4
    assert serial.root == parallel.root and serial.head_hash == parallel.head_hash
    execute(engine, "DELETE FROM ledger_entries WHERE seq >= 40")
    assert verify(engine, verifier=signer.verifier(), batch_size=4, workers=2).failure.seq == 40
