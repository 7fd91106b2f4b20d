"""Active probes of the readiness audit: each exercises the real code path on scratch resources
(a temporary SQLite database, generated canary secrets) and returns ``(ok, evidence)``.

Nothing here writes to the production database except what the gateway itself would write on
first use (the key ring, the JWT key file); canary values are random per run and never printed.
"""

from __future__ import annotations

import io
import logging
import secrets
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jwt
import orjson
from sqlalchemy import Engine, select

from opsgate.clock import Clock, ManualClock
from opsgate.config import Settings
from opsgate.ledger.writer import Ledger
from opsgate.security.crypto import FieldCipher
from opsgate.security.errors import Unauthorized
from opsgate.security.keyring import KeyRing, master_key
from opsgate.security.refresh import RefreshTokens
from opsgate.security.secrets import EncryptedCache, SecretStore
from opsgate.store.db import make_engine, upgrade
from opsgate.store.models import ledger_entries

Probe = tuple[bool, str]
DECRYPT_TARGET_MS = 100.0
DECRYPT_RUNS = 1000
CANARY_LOGGER = "opsgate.readiness"


def canary_key() -> str:
    """A random value in Anthropic's key shape (``sk-ant-api03-`` + 95 characters)."""
    return "sk-ant-api03-" + secrets.token_urlsafe(72)[:95]


@contextmanager
def scratch_engine() -> Iterator[Engine]:
    """A migrated SQLite database in a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="opsgate-readiness-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'probe.db'}"
        upgrade(url)
        engine = make_engine(url)
        try:
            yield engine
        finally:
            engine.dispose()


def sanitizer_canary() -> Probe:
    """Log a line holding a canary key through this process's root logging handlers (their
    streams captured for the moment) and check it came out redacted."""
    key = canary_key()
    return _log_canary(f"api_key={key}", (key, key[:20]), "the canary key")


def pii_canary() -> Probe:
    """Log a line holding a random email address the same way and check it came out redacted
    (the sanitizer's personal-data rules; problem documents never echo input values)."""
    address = f"readiness.{secrets.token_hex(6)}@example.org"
    return _log_canary(f"user email {address}", (address,), "the canary email address")


def _log_canary(payload: str, clear: tuple[str, ...], what: str) -> Probe:
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    if not handlers:
        return False, "no root log handler is configured, so no log line is known to be sanitized"
    buffers = [io.StringIO() for _ in handlers]
    saved = [h.setStream(b) for h, b in zip(handlers, buffers, strict=True)]
    logger = logging.getLogger(CANARY_LOGGER)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        logger.info("readiness canary %s", payload)
    finally:
        logger.setLevel(level)
        for h, stream in zip(handlers, saved, strict=True):
            h.setStream(stream)
    out = "".join(b.getvalue() for b in buffers)
    if "readiness canary" not in out:
        return False, "the canary line did not reach the log output (level or filter drops INFO)"
    if any(c in out for c in clear):
        return False, f"{what} came out in clear: the sanitizer is not on the logging path"
    return True, f"canary line with {what} logged through {len(handlers)} handler(s) came out redacted"


def encrypted_cache() -> Probe:
    """Put a canary in the secrets cache and check it is held as an AES-GCM ciphertext."""
    cache, value = EncryptedCache(ttl_s=5.0), canary_key()
    cache.put("READINESS_CANARY", value)
    sealed = cache.ciphertext("READINESS_CANARY") or b""
    if value.encode() in sealed or value[:16].encode() in sealed:
        return False, "the cache holds the secret in clear"
    if cache.get("READINESS_CANARY") != value:
        return False, "the cache did not return the value it was given"
    return (
        True,
        f"cached value held as a {len(sealed)}-byte AES-256-GCM ciphertext (plaintext + 16-byte tag)",
    )


async def pre_access_logging(clock: Clock) -> Probe:
    """Read a canary secret through :class:`SecretStore` on a scratch ledger; check the
    ``secret_access`` entry was written and holds the name, not the value."""
    value = canary_key()
    with scratch_engine() as engine:
        with Ledger(engine, clock) as ledger:
            store = SecretStore(ledger, clock, env={"READINESS_CANARY": value})
            got = await store.get(
                "READINESS_CANARY", actor="readiness", purpose="pre-access logging probe"
            )
        with engine.connect() as conn:
            bodies = [
                orjson.loads(b) for b in conn.execute(select(ledger_entries.c.body)).scalars()
            ]
    accesses = [
        b for b in bodies if b["kind"] == "secret_access" and b.get("secret") == "READINESS_CANARY"
    ]
    if got != value or not accesses:
        return False, "reading a secret wrote no secret_access ledger entry"
    if any(value in orjson.dumps(b).decode() for b in bodies):
        return False, "the secret's value reached the ledger"
    return (
        True,
        "a secret read appended secret_access {secret, actor, purpose} first, without the value",
    )


def decrypt_time(settings: Settings, engine: Engine, clock: Clock) -> Probe:
    """Encrypt a canary with the production key ring, then time the first decrypt in a fresh
    ring (it loads and unwraps the ring from the database) and the p99 of warm decrypts."""
    master = master_key(settings)
    sealed = FieldCipher(KeyRing(engine, master, clock)).encrypt(canary_key(), "readiness:probe")
    fresh = FieldCipher(KeyRing(engine, master, clock))
    started = time.perf_counter()
    fresh.decrypt(sealed, "readiness:probe")
    cold_ms = (time.perf_counter() - started) * 1000
    samples = []
    for _ in range(DECRYPT_RUNS):
        started = time.perf_counter()
        fresh.decrypt(sealed, "readiness:probe")
        samples.append((time.perf_counter() - started) * 1000)
    p99 = statistics.quantiles(samples, n=100)[98]
    ok = cold_ms < DECRYPT_TARGET_MS and p99 < DECRYPT_TARGET_MS
    return ok, (
        f"first decrypt (loads the ring) {cold_ms:.2f} ms; p99 of {DECRYPT_RUNS} decrypts "
        f"{p99 * 1000:.1f} µs (target < {DECRYPT_TARGET_MS:.0f} ms)"
    )


def jwt_expiry(settings: Settings, clock: Clock) -> Probe:
    """Issue an access token with the running settings and read its ``exp - iat``."""
    from opsgate.security.auth import TokenService

    token = TokenService(settings, clock).issue("readiness-probe", "user")
    claims = jwt.decode(token, options={"verify_signature": False})
    lifetime = claims["exp"] - claims["iat"]
    return lifetime == 3600, f"an issued access token lives {lifetime} s (exp - iat; policy 3600 s)"


def refresh_rotation(settings: Settings) -> Probe:
    """On a scratch database with the running TTL and grace: a refresh token rotates, and
    presenting the rotated one after the grace window fails and revokes the family."""
    clock = ManualClock()
    with scratch_engine() as engine:
        tokens = RefreshTokens(engine, clock, settings.refresh_token_ttl_s, settings.refresh_reuse_grace_s,
                               successor_key=secrets.token_bytes(32))
        first = tokens.issue("readiness-probe")
        second = tokens.rotate(first.token)
        clock.advance(settings.refresh_reuse_grace_s + 1)
        try:
            tokens.rotate(first.token)
        except Unauthorized:
            revoked = not tokens.family_active(first.family_id)
        else:
            return False, "a rotated refresh token was accepted again after the grace window"
    if second.token == first.token or not revoked:
        return False, "reuse of a rotated refresh token did not revoke its family"
    return True, (
        f"each use rotates the token; reuse after the {settings.refresh_reuse_grace_s:g} s grace "
        "was refused and revoked the family"
    )


def probe_user() -> str:
    """A user id for one probe run."""
    return f"readiness-{uuid.uuid4().hex[:12]}"
