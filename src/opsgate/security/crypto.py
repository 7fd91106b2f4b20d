"""Field encryption at rest: AES-256-GCM under the versioned key ring, plus a blind index.

Ciphertext layout (bytes)::

    0x01 | key_id (4, big-endian) | nonce (12, random) | AES-256-GCM ciphertext || tag (16)

The first five bytes (format version and key id) are also the AEAD associated data together with
the caller's ``context`` (e.g. ``"users.email:alice"``), so a ciphertext moved to another row,
column or key id fails to decrypt. Random 96-bit nonces follow NIST SP 800-38D §8.2.2; with one key
per month the number of encryptions per key stays far below its 2^32 bound.

Blind index: ``HMAC-SHA256(index_key, normalised value)`` (32 bytes) with its own key, so equality
lookups (e.g. by email address) work without decrypting and without revealing the value.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct

from cryptography.exceptions import InvalidTag

from opsgate.security.errors import DecryptionFailed, KeyRingError
from opsgate.security.keyring import KeyRing

FORMAT = 1
HEADER = struct.Struct(">BI")
NONCE_BYTES = 12


class FieldCipher:
    """Encrypts and decrypts one field value at a time with the ring's keys."""

    def __init__(self, keyring: KeyRing) -> None:
        self._ring = keyring

    def encrypt(self, plaintext: str, context: str) -> bytes:
        """Encrypt ``plaintext`` (UTF-8) under the current data key, bound to ``context`` (a stable
        name of where the value lives, e.g. ``"users.email:<user_id>"``); returns the layout above."""
        key_id, aead = self._ring.current()
        header = HEADER.pack(FORMAT, key_id)
        nonce = secrets.token_bytes(NONCE_BYTES)
        return header + nonce + aead.encrypt(nonce, plaintext.encode(), header + context.encode())

    def decrypt(self, ciphertext: bytes, context: str) -> str:
        """The plaintext of ``ciphertext`` stored under ``context``. Raises
        :class:`DecryptionFailed` for a tampered value, another context or an unknown format."""
        if len(ciphertext) < HEADER.size + NONCE_BYTES + 16:
            raise DecryptionFailed("a stored ciphertext is truncated")
        try:
            aead = self._ring.aead(key_id_of(ciphertext))
        except KeyRingError:
            raise DecryptionFailed("a stored ciphertext names a key the ring does not hold") from None
        header = ciphertext[: HEADER.size]
        nonce = ciphertext[HEADER.size : HEADER.size + NONCE_BYTES]
        try:
            return aead.decrypt(nonce, ciphertext[HEADER.size + NONCE_BYTES :], header + context.encode()).decode()
        except InvalidTag:
            raise DecryptionFailed("a stored ciphertext failed authentication") from None

    def blind_index(self, value: str) -> bytes:
        """``HMAC-SHA256(index_key, value)``: 32 bytes for equality lookups. Normalise first
        (for emails, :func:`normalise_email`)."""
        return hmac.new(self._ring.index_key(), value.encode(), hashlib.sha256).digest()


def key_id_of(ciphertext: bytes) -> int:
    """The data key id a ciphertext was made with. Raises :class:`DecryptionFailed` for another
    format version."""
    version, key_id = HEADER.unpack_from(ciphertext)
    if version != FORMAT:
        raise DecryptionFailed("a stored ciphertext has an unknown format")
    return key_id


def normalise_email(address: str) -> str:
    """The form of an email address used for the blind index: surrounding space removed and the
    whole address lower-cased (RFC 5321 lets local parts be case-sensitive; no real provider is)."""
    return address.strip().lower()
