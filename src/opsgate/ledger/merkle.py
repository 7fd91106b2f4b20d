"""RFC 9162 §2.1 Merkle tree hashes over ledger bodies (leaf index = ``seq``).

``leaf_hash(body) = SHA-256(0x00 || body)``; ``node_hash(l, r) = SHA-256(0x01 || l || r)``;
the tree hash of ``n`` leaves splits at the largest power of two below ``n`` (no odd-leaf
duplication, unlike Bitcoin's tree). :class:`CompactRange` keeps the O(log n) roots of the
perfect subtrees of a growing tree, so the root of every prefix size is available while leaves
stream past (verification, checkpointing) without holding the leaves in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
_LEAF = hashlib.sha256(b"\x00")
_NODE = hashlib.sha256(b"\x01")
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""RFC 9162 §2.1.1: the hash of an empty tree is the hash of the empty string."""


def leaf_hash(body: bytes) -> bytes:
    """``SHA-256(0x00 || body)``, 32 bytes (RFC 9162 §2.1.1)."""
    digest = _LEAF.copy()
    digest.update(body)
    return digest.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``, 32 bytes (RFC 9162 §2.1.1)."""
    digest = _NODE.copy()
    digest.update(left)
    digest.update(right)
    return digest.digest()


def largest_power_of_two_below(n: int) -> int:
    """The largest power of two ``k`` with ``k < n``, for ``n >= 2`` (RFC 9162's split point)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """The Merkle tree hash of ``leaves`` (leaf hashes, not bodies), RFC 9162 §2.1.1."""
    return subtree_root(leaves, 0, len(leaves))


def subtree_root(leaves: Sequence[bytes], start: int, end: int) -> bytes:
    """The tree hash of ``leaves[start:end]`` without copying the slice (RFC 9162 MTH)."""
    compact = CompactRange()
    for index in range(start, end):
        compact.append(leaves[index])
    return compact.root()


class CompactRange:
    """The perfect-subtree roots covering leaves ``0 .. size-1`` (a Merkle "frontier").

    ``append(leaf_hash)`` costs O(1) amortised node hashes; ``root()`` folds the O(log size)
    subtree roots right to left, which is exactly RFC 9162's recursive split for ``size``.
    """

    __slots__ = ("_hashes", "size")

    def __init__(self) -> None:
        self.size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def restore(cls, size: int, frontier: bytes) -> CompactRange:
        """Rebuild from :meth:`frontier` bytes; ValueError unless there is one hash per set bit."""
        if len(frontier) != HASH_SIZE * size.bit_count():
            raise ValueError(f"a frontier of size {size} holds {size.bit_count()} hashes")
        compact = cls()
        compact.size = size
        compact._hashes = [frontier[i : i + HASH_SIZE] for i in range(0, len(frontier), HASH_SIZE)]
        return compact

    def frontier(self) -> bytes:
        """The perfect-subtree roots, largest (leftmost) first, concatenated (32 bytes each)."""
        return b"".join(self._hashes)

    def copy(self) -> CompactRange:
        """An independent copy."""
        return CompactRange.restore(self.size, self.frontier())

    def subtrees(self) -> list[tuple[int, bytes]]:
        """``(height, hash)`` of each perfect subtree, largest (leftmost) first."""
        heights = [h for h in range(self.size.bit_length() - 1, -1, -1) if self.size >> h & 1]
        return list(zip(heights, self._hashes, strict=True))

    def append_subtree(self, node: bytes, height: int) -> None:
        """Add a perfect subtree of ``2**height`` leaves whose hash is ``node``; ValueError unless
        ``size`` is a multiple of ``2**height`` (the subtree must be aligned, RFC 9162 shape)."""
        if self.size & ((1 << height) - 1):
            raise ValueError(f"a subtree of height {height} cannot start at leaf {self.size}")
        hashes = self._hashes
        size = self.size >> height
        while size & 1:
            node = node_hash(hashes.pop(), node)
            size >>= 1
        hashes.append(node)
        self.size += 1 << height

    def append(self, leaf: bytes) -> None:
        """Add the next leaf hash (32 bytes)."""
        hashes = self._hashes
        size = self.size
        while size & 1:
            leaf = node_hash(hashes.pop(), leaf)
            size >>= 1
        hashes.append(leaf)
        self.size += 1

    def root(self) -> bytes:
        """The tree hash of the ``size`` leaves so far; :data:`EMPTY_ROOT` when there are none."""
        if not self._hashes:
            return EMPTY_ROOT
        root = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            root = node_hash(left, root)
        return root
