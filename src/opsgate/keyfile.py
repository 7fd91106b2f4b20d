"""Key files on local disk (the embedded default's JWT, master and ledger signing keys).

A key file is published atomically: its content is written and fsynced in a private temporary
file in the same directory, then linked into place with ``os.link``, which never overwrites. A
concurrent reader sees either no file or the whole key; of several processes creating the same
file at once, exactly one wins and the others read its key.
"""

from __future__ import annotations

import base64
import os
import secrets
import tempfile
from pathlib import Path


def publish_new(path: Path, content: str) -> None:
    """Create ``path`` (mode 0600) holding ``content``; ``FileExistsError`` if it already exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".key-")  # mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def random_key_file(path: Path, nbytes: int = 32) -> str:
    """The base64url key kept in ``path``, made of ``nbytes`` random bytes on first use; every
    caller, in any process, gets the same key."""
    if not path.exists():
        try:
            publish_new(path, base64.urlsafe_b64encode(secrets.token_bytes(nbytes)).decode())
        except FileExistsError:
            pass  # another process published first: use its key
    return path.read_text().strip()
