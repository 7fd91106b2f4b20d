"""Random keys kept in local files (the embedded default's JWT and master keys)."""

from __future__ import annotations

import base64
import os
import secrets
import tempfile
from pathlib import Path


def random_key_file(path: Path, nbytes: int = 32) -> str:
    """The base64url key kept in ``path`` (mode 0600), made of ``nbytes`` random bytes on first use.

    Creation is atomic across processes: the key is written and fsynced in a private temporary
    file, then published with ``os.link``, which never overwrites. A concurrent caller sees either
    no file or the whole key, and every caller returns the same key.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".key-")  # mode 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(base64.urlsafe_b64encode(secrets.token_bytes(nbytes)).decode())
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process published first: use its key
        finally:
            os.unlink(tmp)
    return path.read_text().strip()
