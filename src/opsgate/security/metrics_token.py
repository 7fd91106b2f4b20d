"""The scrape credential of ``GET /metrics``: a random bearer token kept in a file.

Prometheus cannot refresh a JWT, so ``/metrics`` also accepts the token held in the file named by
``OPSGATE_METRICS_TOKEN_FILE`` (Prometheus reads the same file: ``authorization.credentials_file``
in a scrape config). The token never expires; rotate it with ``opsgate keys metrics-token
--rotate``. No other route accepts it: it is not a JWT, so :class:`~opsgate.security.auth.TokenService`
refuses it everywhere else. Comparison is constant-time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from opsgate.keyfile import publish_new
from opsgate.security.sanitizer import hold_secret

DEFAULT_PATH = Path(".opsgate/metrics-token")
TOKEN_BYTES = 32


def create(path: Path, *, rotate: bool = False) -> bool:
    """Write a new token (256 random bits, base64url) to ``path`` with mode 0600. Without
    ``rotate`` an existing file is kept and False returned; with it the file is replaced atomically
    (temp file + rename), so a scraper reads the old or the new token, never half of one."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    if not rotate:
        try:
            publish_new(path, token + "\n")
        except FileExistsError:
            return False
        return True
    staged = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    publish_new(staged, token + "\n")
    os.replace(staged, path)
    return True


def accepts(path: Path | None, authorization: str | None) -> bool:
    """True when ``authorization`` is ``Bearer <the token in path>``. False when no file is
    configured, it cannot be read or is empty, or the header is absent or differs."""
    if path is None or not authorization:
        return False
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    try:
        expected = hold_secret(path.read_text().strip())
    except OSError:
        return False
    return bool(expected) and hmac.compare_digest(presented.strip().encode(), expected.encode())
