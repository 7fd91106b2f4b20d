"""C2SP signed notes and tlog-checkpoints: the Go reference vector, refusals, key files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from opsgate.ledger.checkpoint import (
    Checkpoint,
    Signer,
    Verifier,
    load_key_file,
    parse_checkpoint,
    write_key_file,
)
from opsgate.ledger.errors import CheckpointError

VECTOR = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "checkpoint_note.json").read_text())


def test_go_reference_note_is_reproduced_byte_for_byte() -> None:
    signer = Signer(VECTOR["skey"])
    assert signer.verifier_key() == VECTOR["vkey"]
    assert signer.sign(VECTOR["text"].encode()) == VECTOR["note"].encode()
    assert Verifier(VECTOR["vkey"]).open(VECTOR["note"].encode()) == VECTOR["text"].encode()


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda n: n.replace(b"problem,", b"problem;"), "bad signature"),
        (lambda n: n.replace(b"x08go", b"x09go"), "bad signature|not signed"),
        (lambda n: n.replace(b"PeterNeumann x", b"PeterNeuman x"), "not signed by"),
        (lambda n: n.split(b"\n\n")[0] + b"\n", "no signature"),
        (lambda n: n.replace("\u2014".encode(), b"--"), "malformed signature line"),
    ],
)
def test_forged_or_damaged_notes_are_refused(mangle, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CheckpointError, match=message):
        Verifier(VECTOR["vkey"]).open(mangle(VECTOR["note"].encode()))


def test_checkpoint_body_format_and_parse() -> None:
    checkpoint = Checkpoint("example.com/log", 12, bytes(range(32)))
    assert checkpoint.body() == (
        b"example.com/log\n12\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
    )
    assert parse_checkpoint(checkpoint.body()) == checkpoint
    assert parse_checkpoint(checkpoint.body() + b"extension line\n") == checkpoint
    for bad in (b"o\n012\nAAAA\n", b"o\n12\nAAAA\n", b"o\n12\n", b"o\n-1\n" + b"A" * 44 + b"\n"):
        with pytest.raises(CheckpointError):
            parse_checkpoint(bad)


def test_key_file_is_private_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "ledger.key"
    signer = write_key_file(path, "opsgate.test/ledger")
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_key_file(path).verifier_key() == signer.verifier_key()
    assert signer.verifier_key().startswith("opsgate.test/ledger+")
    with pytest.raises(FileExistsError):
        write_key_file(path, "opsgate.test/ledger")
    os.chmod(path, 0o644)
    with pytest.raises(CheckpointError, match="chmod 600"):
        load_key_file(path)
