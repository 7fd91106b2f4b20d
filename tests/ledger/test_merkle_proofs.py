"""RFC 9162 trees and proofs, checked exhaustively against a naive reference for all sizes <= 64."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from opsgate.ledger.checkpoint import Checkpoint, Signer, generate_signer_key
from opsgate.ledger.errors import ProofError
from opsgate.ledger.merkle import EMPTY_ROOT, CompactRange, leaf_hash, node_hash, root_of
from opsgate.ledger.proofs import (
    ConsistencyProof,
    InclusionProof,
    consistency_proof,
    inclusion_proof,
    verify_consistency,
    verify_consistency_against,
    verify_inclusion,
    verify_inclusion_against,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "merkle_rfc6962.json"
N = 64
LEAVES = [leaf_hash(f"entry {i}".encode()) for i in range(N)]


def ref_mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1, written as the RFC states it (recursion on the largest power of 2 < n)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH, on slices."""
    if len(leaves) == 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m < k:
        return ref_path(m, leaves[:k]) + [ref_mth(leaves[k:])]
    return ref_path(m - k, leaves[k:]) + [ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    """RFC 9162 §2.1.4.1 SUBPROOF, on slices."""
    n = len(leaves)
    if m == n:
        return [] if whole else [ref_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return ref_subproof(m, leaves[:k], whole) + [ref_mth(leaves[k:])]
    return ref_subproof(m - k, leaves[k:], False) + [ref_mth(leaves[:k])]


def test_frozen_rfc6962_roots() -> None:
    vectors = json.loads(VECTORS.read_text())
    leaves = [leaf_hash(bytes.fromhex(h)) for h in vectors["leaf_inputs"]]
    assert [root_of(leaves[:n]).hex() for n in range(1, 9)] == vectors["roots"]
    assert vectors["roots"][-1] == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


def test_roots_and_compact_range_match_the_reference_for_every_size() -> None:
    tree = CompactRange()
    assert tree.root() == EMPTY_ROOT == ref_mth([])
    for n in range(1, N + 1):
        tree.append(LEAVES[n - 1])
        assert tree.root() == ref_mth(LEAVES[:n]) == root_of(LEAVES[:n]), n
        restored = CompactRange.restore(n, tree.frontier())
        assert restored.root() == tree.root()


def test_every_inclusion_proof_up_to_64() -> None:
    for n in range(1, N + 1):
        root = ref_mth(LEAVES[:n])
        for m in range(n):
            proof = inclusion_proof(LEAVES, m, n)
            assert list(proof.hashes) == ref_path(m, LEAVES[:n]), (m, n)
            verify_inclusion(LEAVES[m], proof, root)
            if n > 1:  # the path for a neighbouring leaf, or a damaged path, must fail
                with pytest.raises(ProofError):
                    verify_inclusion(LEAVES[(m + 1) % n], proof, root)
                with pytest.raises(ProofError):
                    verify_inclusion(LEAVES[m], InclusionProof(m, n, _flip(proof.hashes)), root)


def test_every_consistency_proof_up_to_64() -> None:
    for n in range(1, N + 1):
        new_root = ref_mth(LEAVES[:n])
        for m in range(1, n + 1):
            old_root = ref_mth(LEAVES[:m])
            proof = consistency_proof(LEAVES, m, n)
            assert list(proof.hashes) == ref_subproof(m, LEAVES[:n], True), (m, n)
            verify_consistency(proof, old_root, new_root)
            if m < n:
                with pytest.raises(ProofError):
                    verify_consistency(proof, new_root, old_root)
                if proof.hashes:
                    with pytest.raises(ProofError):
                        verify_consistency(
                            ConsistencyProof(m, n, _flip(proof.hashes)), old_root, new_root
                        )


def _flip(hashes: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """The proof with one bit of its last hash flipped."""
    last = hashes[-1]
    return (*hashes[:-1], last[:-1] + bytes([last[-1] ^ 1]))


def test_a_proof_fits_only_the_size_its_signed_checkpoint_names() -> None:
    """A path can also fit a bare root of another size (leaf 0 of 3 and of 4 share a path shape),
    which is why proofs are accepted only against a signed checkpoint naming the size."""
    proof = inclusion_proof(LEAVES, 0, 3)
    verify_inclusion(LEAVES[0], InclusionProof(0, 4, proof.hashes), root_of(LEAVES[:3]))
    signer = Signer(generate_signer_key("test.example/log"))
    note = signer.sign_checkpoint(Checkpoint("test.example/log", 3, root_of(LEAVES[:3])))
    with pytest.raises(ProofError, match="proof is for size 4, checkpoint for 3"):
        verify_inclusion_against(LEAVES[0], InclusionProof(0, 4, proof.hashes), note,
                                 signer.verifier())


def test_odd_leaf_duplication_is_not_the_tree() -> None:
    """Bitcoin-style trees duplicate the last odd leaf; RFC 9162 does not, and a proof built on a
    duplicated leaf does not verify against the real root."""
    three = LEAVES[:3]
    duplicated = node_hash(node_hash(three[0], three[1]), node_hash(three[2], three[2]))
    assert root_of(three) == node_hash(node_hash(three[0], three[1]), three[2]) != duplicated
    forged = InclusionProof(3, 4, (three[2], node_hash(three[0], three[1])))
    with pytest.raises(ProofError):
        verify_inclusion(three[2], forged, root_of(three))


def test_leaf_and_node_hashes_cannot_be_confused() -> None:
    """An interior node presented as a leaf (second-preimage attempt) does not verify: leaves are
    hashed with 0x00 and nodes with 0x01."""
    root = root_of(LEAVES[:4])
    inner = node_hash(LEAVES[0], LEAVES[1])
    proof = InclusionProof(0, 2, (node_hash(LEAVES[2], LEAVES[3]),))
    verify_inclusion(inner, proof, root)  # true as a 2-leaf tree of nodes ...
    with pytest.raises(ProofError):  # ... but as leaf 0 of the 4-entry log it is refused
        verify_inclusion(inner, InclusionProof(0, 4, proof.hashes), root)
    assert leaf_hash(LEAVES[0] + LEAVES[1]) != inner


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: inclusion_proof(LEAVES, 0, 0), "no leaf 0 in a tree of size 0"),
        (lambda: inclusion_proof(LEAVES, 5, 5), "no leaf 5"),
        (lambda: inclusion_proof(LEAVES, 0, N + 1), "no leaf 0"),
        (lambda: consistency_proof(LEAVES, 0, 8), "from size 0"),
        (lambda: consistency_proof(LEAVES, 9, 8), "from size 9"),
        (lambda: verify_consistency(ConsistencyProof(0, 8, ()), EMPTY_ROOT, LEAVES[0]), "sizes 0"),
        (lambda: verify_inclusion(LEAVES[0], InclusionProof(0, 0, ()), LEAVES[0]), "outside"),
        (lambda: verify_inclusion(b"short", InclusionProof(0, 1, ()), LEAVES[0]), "32 bytes"),
    ],
)
def test_impossible_sizes_are_refused(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProofError, match=message):
        make()


def test_proofs_are_only_accepted_against_signed_roots() -> None:
    signer = Signer(generate_signer_key("test.example/log"))
    other = Signer(generate_signer_key("test.example/log"))
    notes = {n: signer.sign_checkpoint(Checkpoint("test.example/log", n, root_of(LEAVES[:n])))
             for n in (5, 9)}
    proof = inclusion_proof(LEAVES, 3, 9)
    assert verify_inclusion_against(LEAVES[3], proof, notes[9], signer.verifier()).size == 9
    unsigned = Checkpoint("test.example/log", 9, root_of(LEAVES[:9])).body()
    for note in (unsigned, unsigned + b"\n", notes[9].replace(b"\xe2\x80\x94", b"-")):
        with pytest.raises(ProofError.__mro__[1]):  # CheckpointError or ProofError: LedgerError
            verify_inclusion_against(LEAVES[3], proof, note, signer.verifier())
    with pytest.raises(ProofError.__mro__[1], match="not signed by"):
        verify_inclusion_against(LEAVES[3], proof, other.sign_checkpoint(
            Checkpoint("test.example/log", 9, root_of(LEAVES[:9]))), Signer(
                generate_signer_key("someone.else")).verifier())
    with pytest.raises(ProofError, match="checkpoint for 5"):
        verify_inclusion_against(LEAVES[3], proof, notes[5], signer.verifier())
    consistency = consistency_proof(LEAVES, 5, 9)
    old, new = verify_consistency_against(consistency, notes[5], notes[9], signer.verifier())
    assert (old.size, new.size) == (5, 9)
    with pytest.raises(ProofError):
        verify_consistency_against(consistency, notes[9], notes[5], signer.verifier())
