"""Signed checkpoints: C2SP tlog-checkpoint bodies in C2SP signed notes, Ed25519.

Checkpoint body (https://c2sp.org/tlog-checkpoint)::

    <origin>\\n
    <tree size, decimal, no leading zeros>\\n
    <base64 RFC 9162 root hash>\\n

Signed note (https://c2sp.org/signed-note): the body, an empty line, then one line per signature
``— <key name> <base64(key id (4 bytes) || Ed25519 signature (64 bytes))>\\n``. The key id is
``SHA-256(key name || 0x0A || 0x01 || public key)[:4]``. Keys use the Go ``sumdb/note`` text
forms: signer ``PRIVATE+KEY+<name>+<key id hex>+<base64(0x01 || 32-byte seed)>`` and verifier
``<name>+<key id hex>+<base64(0x01 || public key)>``. Every refusal raises
:class:`CheckpointError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from opsgate.keyfile import publish_new
from opsgate.ledger.errors import CheckpointError
from opsgate.ledger.merkle import HASH_SIZE

ALG_ED25519 = 0x01
EM_DASH = "\u2014"
_NAME_RE = re.compile(r"[^\s+]+\Z")
_SIZE_RE = re.compile(r"(0|[1-9][0-9]{0,19})\Z")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tree head: ``origin`` (log name), ``size`` (leaves), ``root`` (32-byte RFC 9162 hash)."""

    origin: str
    size: int
    root: bytes

    def body(self) -> bytes:
        """The three-line C2SP tlog-checkpoint text, UTF-8, ending in a newline."""
        root = base64.b64encode(self.root).decode("ascii")
        return f"{self.origin}\n{self.size}\n{root}\n".encode()


def parse_checkpoint(text: bytes) -> Checkpoint:
    """Parse a checkpoint body (extension lines after the third are allowed and ignored)."""
    try:
        lines = text.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise CheckpointError("checkpoint is not UTF-8") from None
    if len(lines) < 4 or lines[-1] != "" or "" in lines[:-1]:
        raise CheckpointError("checkpoint must be at least three non-empty lines ending in \\n")
    origin, size, root = lines[0], lines[1], lines[2]
    if not _SIZE_RE.match(size):
        raise CheckpointError(f"checkpoint size {size!r} is not a decimal without leading zeros")
    try:
        root_hash = base64.b64decode(root, validate=True)
    except binascii.Error:
        raise CheckpointError("checkpoint root is not base64") from None
    if len(root_hash) != HASH_SIZE:
        raise CheckpointError("checkpoint root is not 32 bytes")
    return Checkpoint(origin, int(size), root_hash)


def key_id(name: str, public_key: bytes) -> bytes:
    """``SHA-256(name || "\\n" || 0x01 || public_key)[:4]`` (C2SP signed-note, Ed25519)."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


class Verifier:
    """Checks notes signed by one Ed25519 key, given as a verifier key string."""

    def __init__(self, vkey: str) -> None:
        name, kid, key = _split_key(vkey, 3)
        if len(key) != 33 or key[0] != ALG_ED25519 or key_id(name, key[1:]) != kid:
            raise CheckpointError("verifier key is not a well-formed Ed25519 note key")
        self.name, self.key_id = name, kid
        self._public = Ed25519PublicKey.from_public_bytes(key[1:])

    def open(self, note: bytes) -> bytes:
        """Return the note's text if it carries a valid signature by this key; else raise.

        Signatures by other keys are ignored; a signature line naming this key with the right key
        id but a bad signature is an error, as is a note with no signature by this key.
        """
        text, signatures = _split_note(note)
        for name, blob in signatures:
            if name == self.name and blob[:4] == self.key_id:
                try:
                    self._public.verify(blob[4:], text)
                except InvalidSignature:
                    raise CheckpointError(f"bad signature by {name}") from None
                return text
        raise CheckpointError(f"note is not signed by {self.name}")

    def open_checkpoint(self, note: bytes) -> Checkpoint:
        """:meth:`open` then :func:`parse_checkpoint`."""
        return parse_checkpoint(self.open(note))


class Signer:
    """Signs notes with one Ed25519 key, given as a ``PRIVATE+KEY+...`` signer key string."""

    def __init__(self, skey: str) -> None:
        if not skey.startswith("PRIVATE+KEY+"):
            raise CheckpointError("signer key must start with PRIVATE+KEY+")
        name, kid, key = _split_key(skey.removeprefix("PRIVATE+KEY+"), 3)
        if len(key) != 33 or key[0] != ALG_ED25519:
            raise CheckpointError("signer key is not an Ed25519 note key")
        self._private = Ed25519PrivateKey.from_private_bytes(key[1:])
        public = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        if key_id(name, public) != kid:
            raise CheckpointError("signer key id does not match its key")
        self.name, self.key_id, self.public_key = name, kid, public

    def verifier_key(self) -> str:
        """The matching verifier key string (safe to publish)."""
        encoded = base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def verifier(self) -> Verifier:
        """A :class:`Verifier` for this key."""
        return Verifier(self.verifier_key())

    def sign(self, text: bytes) -> bytes:
        """The signed note: ``text`` (non-empty, ending in ``\\n``, no empty line at its end),
        an empty line and this key's signature line."""
        if not text.endswith(b"\n") or text.endswith(b"\n\n"):
            raise CheckpointError("note text must end in exactly one newline")
        blob = base64.b64encode(self.key_id + self._private.sign(text)).decode("ascii")
        return text + f"\n{EM_DASH} {self.name} {blob}\n".encode()

    def sign_checkpoint(self, checkpoint: Checkpoint) -> bytes:
        """The signed note of ``checkpoint.body()``."""
        return self.sign(checkpoint.body())


def generate_signer_key(name: str) -> str:
    """A new random Ed25519 signer key string for key name ``name`` (no ``+`` or whitespace)."""
    if not _NAME_RE.match(name):
        raise CheckpointError(f"key name {name!r} may not contain '+' or whitespace")
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    seed = private.private_bytes_raw()
    encoded = base64.b64encode(bytes([ALG_ED25519]) + seed).decode("ascii")
    return f"PRIVATE+KEY+{name}+{key_id(name, public).hex()}+{encoded}"


def write_key_file(path: Path, name: str) -> Signer:
    """Create ``path`` (mode 0600, published atomically; ``FileExistsError`` rather than overwrite)
    holding a new signer key; return it."""
    skey = generate_signer_key(name)
    publish_new(path, skey + "\n")
    return Signer(skey)


def load_key_file(path: Path) -> Signer:
    """Read a signer key file. Refused (CheckpointError) when group or others may read it."""
    if path.stat().st_mode & 0o077:
        raise CheckpointError(f"{path} must be readable by its owner only (chmod 600)")
    return Signer(path.read_text(encoding="ascii").strip())


def _split_key(text: str, parts: int) -> tuple[str, bytes, bytes]:
    fields = text.split("+", parts - 1)
    if len(fields) != parts or not _NAME_RE.match(fields[0]) or len(fields[1]) != 8:
        raise CheckpointError("key must be <name>+<8 hex digits>+<base64>")
    try:
        return fields[0], bytes.fromhex(fields[1]), base64.b64decode(fields[2], validate=True)
    except (ValueError, binascii.Error):
        raise CheckpointError("key id or key material is not hex/base64") from None


def _split_note(note: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    cut = note.rfind(b"\n\n")
    if cut < 0 or not note.endswith(b"\n"):
        raise CheckpointError("note has no signature block")
    text, block = note[: cut + 1], note[cut + 2 :]
    signatures = []
    try:
        lines = block.decode("utf-8").split("\n")[:-1]
    except UnicodeDecodeError:
        raise CheckpointError("signature block is not UTF-8") from None
    for line in lines:
        dash, _, rest = line.partition(" ")
        name, _, encoded = rest.partition(" ")
        try:
            blob = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise CheckpointError("signature is not base64") from None
        if dash != EM_DASH or not _NAME_RE.match(name) or len(blob) < 5:
            raise CheckpointError(f"malformed signature line {line!r}")
        signatures.append((name, blob))
    if not signatures:
        raise CheckpointError("note has no signatures")
    return text, signatures
