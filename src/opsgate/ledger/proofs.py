"""Inclusion and consistency proofs (RFC 9162 §2.1.3 and §2.1.4) and their verification.

Generation takes the leaf hashes of the tree (``merkle.leaf_hash`` of each stored body, index =
``seq``). Verification is standalone: it needs only the proof, the leaf hash and roots. The
``*_against`` functions take signed checkpoints instead of bare roots, so a proof is only ever
accepted against a root the ledger's key signed. Every refusal raises :class:`ProofError`.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opsgate.ledger.checkpoint import Checkpoint, Verifier
from opsgate.ledger.errors import ProofError
from opsgate.ledger.merkle import HASH_SIZE, largest_power_of_two_below, node_hash, subtree_root


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """Leaf ``index`` (= seq) is in the tree of ``tree_size`` leaves: ``hashes`` are the audit path."""

    index: int
    tree_size: int
    hashes: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        """``{"index", "tree_size", "hashes": [base64, ...]}``."""
        return {"index": self.index, "tree_size": self.tree_size, "hashes": _b64(self.hashes)}


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    """The tree of ``old_size`` leaves is a prefix of the tree of ``new_size`` leaves."""

    old_size: int
    new_size: int
    hashes: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        """``{"old_size", "new_size", "hashes": [base64, ...]}``."""
        return {"old_size": self.old_size, "new_size": self.new_size, "hashes": _b64(self.hashes)}


def inclusion_proof(leaves: Sequence[bytes], index: int, tree_size: int) -> InclusionProof:
    """RFC 9162 §2.1.3.1 ``PATH(index, D[0:tree_size])`` over ``leaves`` (leaf hashes).

    Raises ProofError unless ``0 <= index < tree_size <= len(leaves)``.
    """
    if not 0 <= index < tree_size <= len(leaves):
        raise ProofError(f"no leaf {index} in a tree of size {tree_size}")
    return InclusionProof(index, tree_size, tuple(_path(leaves, index, 0, tree_size)))


def _path(leaves: Sequence[bytes], m: int, start: int, end: int) -> list[bytes]:
    n = end - start
    if n == 1:
        return []
    k = largest_power_of_two_below(n)
    if m < k:
        return _path(leaves, m, start, start + k) + [subtree_root(leaves, start + k, end)]
    return _path(leaves, m - k, start + k, end) + [subtree_root(leaves, start, start + k)]


def consistency_proof(leaves: Sequence[bytes], old_size: int, new_size: int) -> ConsistencyProof:
    """RFC 9162 §2.1.4.1 ``PROOF(old_size, D[0:new_size])`` over ``leaves`` (leaf hashes).

    Raises ProofError unless ``0 < old_size <= new_size <= len(leaves)`` (a proof from the empty
    tree proves nothing and is refused).
    """
    if not 0 < old_size <= new_size <= len(leaves):
        raise ProofError(f"no consistency proof from size {old_size} to size {new_size}")
    hashes = _subproof(leaves, old_size, 0, new_size, True)
    return ConsistencyProof(old_size, new_size, tuple(hashes))


def _subproof(leaves: Sequence[bytes], m: int, start: int, end: int, whole: bool) -> list[bytes]:
    n = end - start
    if m == n:
        return [] if whole else [subtree_root(leaves, start, end)]
    k = largest_power_of_two_below(n)
    if m <= k:
        return _subproof(leaves, m, start, start + k, whole) + [
            subtree_root(leaves, start + k, end)
        ]
    return _subproof(leaves, m - k, start + k, end, False) + [
        subtree_root(leaves, start, start + k)
    ]


def verify_inclusion(leaf: bytes, proof: InclusionProof, root: bytes) -> None:
    """RFC 9162 §2.1.3.2: check that ``leaf`` (a leaf hash) sits at ``proof.index`` of the tree
    whose hash is ``root``. Returns None; raises ProofError on any mismatch or malformed input."""
    _check_hashes([leaf, root, *proof.hashes])
    if not 0 <= proof.index < proof.tree_size:
        raise ProofError(f"leaf index {proof.index} outside a tree of size {proof.tree_size}")
    fn, sn, r = proof.index, proof.tree_size - 1, leaf
    for p in proof.hashes:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or r != root:
        raise ProofError("inclusion proof does not lead to the root")


def verify_consistency(proof: ConsistencyProof, old_root: bytes, new_root: bytes) -> None:
    """RFC 9162 §2.1.4.2: check that the tree ``old_root`` (``proof.old_size`` leaves) is a prefix
    of the tree ``new_root`` (``proof.new_size`` leaves). Equal sizes need an empty proof and
    equal roots; size 0 and ``old_size > new_size`` are refused. Raises ProofError."""
    _check_hashes([old_root, new_root, *proof.hashes])
    old, new = proof.old_size, proof.new_size
    if not 0 < old <= new:
        raise ProofError(f"no consistency between sizes {old} and {new}")
    if old == new:
        if proof.hashes or old_root != new_root:
            raise ProofError("equal sizes need an empty proof and equal roots")
        return
    path = list(proof.hashes)
    if old & (old - 1) == 0:  # an exact power of two: the old root is the first node
        path.insert(0, old_root)
    if not path:
        raise ProofError("empty consistency proof")
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or fr != old_root or sr != new_root:
        raise ProofError("consistency proof does not lead to both roots")


def verify_inclusion_against(
    leaf: bytes, proof: InclusionProof, note: bytes, verifier: Verifier
) -> Checkpoint:
    """:func:`verify_inclusion` against the root of a signed checkpoint ``note``. The note's
    signature is checked first and its size must equal ``proof.tree_size``. Returns the checkpoint."""
    checkpoint = verifier.open_checkpoint(note)
    if checkpoint.size != proof.tree_size:
        raise ProofError(f"proof is for size {proof.tree_size}, checkpoint for {checkpoint.size}")
    verify_inclusion(leaf, proof, checkpoint.root)
    return checkpoint


def verify_consistency_against(
    proof: ConsistencyProof, old_note: bytes, new_note: bytes, verifier: Verifier
) -> tuple[Checkpoint, Checkpoint]:
    """:func:`verify_consistency` between two signed checkpoint notes whose sizes must match the
    proof's. Returns both checkpoints."""
    old, new = verifier.open_checkpoint(old_note), verifier.open_checkpoint(new_note)
    if (old.size, new.size) != (proof.old_size, proof.new_size):
        raise ProofError(
            f"proof is for sizes {proof.old_size}->{proof.new_size}, "
            f"checkpoints for {old.size}->{new.size}"
        )
    verify_consistency(proof, old.root, new.root)
    return old, new


def _check_hashes(hashes: Sequence[bytes]) -> None:
    if any(len(h) != HASH_SIZE for h in hashes):
        raise ProofError("every hash must be 32 bytes")


def _b64(hashes: Sequence[bytes]) -> list[str]:
    return [base64.b64encode(h).decode("ascii") for h in hashes]
