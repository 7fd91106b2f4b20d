"""Decrypting one encrypted field (an email address) with FieldCipher, beside a bare AESGCM decrypt.

Seed target: < 100 ms per field; goal: <= 50 µs. Run: ``.venv/bin/python bench/field_crypto.py``.
"""

from __future__ import annotations

import base64
import secrets
import tempfile
import timeit
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from opsgate.clock import SystemClock
from opsgate.config import Settings
from opsgate.security.crypto import FieldCipher
from opsgate.security.keyring import KeyRing, master_key
from opsgate.store.db import make_engine, upgrade

N = 100_000


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        engine = make_engine(url)
        settings = Settings(database_url=url, master_key=base64.b64encode(secrets.token_bytes(32)).decode())
        cipher = FieldCipher(KeyRing(engine, master_key(settings), SystemClock()))
        blob = cipher.encrypt("ada.lovelace@example.org", "users.email:ada")
        cipher.decrypt(blob, "users.email:ada")
        ours = min(timeit.repeat(lambda: cipher.decrypt(blob, "users.email:ada"), number=N, repeat=5)) / N
        aead, nonce = AESGCM(secrets.token_bytes(32)), secrets.token_bytes(12)
        bare_ct = aead.encrypt(nonce, b"ada.lovelace@example.org", b"users.email:ada")
        bare = min(timeit.repeat(lambda: aead.decrypt(nonce, bare_ct, b"users.email:ada"), number=N, repeat=5)) / N
        engine.dispose()
    print(f"FieldCipher.decrypt : {ours * 1e6:8.2f} µs per field  (goal <= 50 µs, seed target < 100 ms)")
    print(f"bare AESGCM.decrypt : {bare * 1e6:8.2f} µs per field")
    print(f"ratio               : {ours / bare:8.2f}x   {'PASS' if ours <= 50e-6 else 'MISS'}")


if __name__ == "__main__":
    main()
