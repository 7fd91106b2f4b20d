"""Secrets from environment variables or 1Password references, with a ledger entry per access.

A secret is named by its environment variable (``ANTHROPIC_API_KEY``). The variable holds either
the value or a 1Password reference ``op://vault/item/[section/]field`` resolved through Connect
(:mod:`opsgate.security.secrets_connect`). Before any read — from the cache or the source — the
store appends ``secret_access`` ``{"secret", "actor", "purpose"}`` to the ledger, never the value.

Values are cached in memory encrypted with AES-256-GCM (``cryptography`` AESGCM, a random 96-bit
nonce per entry, the secret's name as associated data, the key only in this process's memory) for
``ttl_s`` seconds; :meth:`SecretStore.refresh` drops entries early. Every value read is also
held by the sanitizer (:func:`~opsgate.security.sanitizer.hold_secret`), so it is redacted
literally in every log line, error and alert, whatever its shape.

Rotation: ``<NAME>_PREVIOUS`` holds the key being retired; :meth:`SecretStore.active_keys` returns
``[current, previous]`` while both are set, so a caller can accept or fall back to either during
the window. ``<NAME>_ROTATED_AT`` (ISO 8601, naive = UTC) dates an environment secret for ``secrets check``.
"""

from __future__ import annotations

import os
import time
from contextlib import AsyncExitStack
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from opsgate.clock import Clock
from opsgate.config import ConfigError, Settings, check_secret, is_reference
from opsgate.ledger.writer import Ledger
from opsgate.providers.http import make_session
from opsgate.security.errors import SecretNotFound, SecretUnavailable
from opsgate.security.sanitizer import hold_secret
from opsgate.security.secrets_connect import ConnectClient, OpReference

NONCE_BYTES = 12
PROVIDER_KEYS = ("ANTHROPIC_API_KEY", "DEEPSEEK_API_KEY", "GEMINI_API_KEY")
"""Provider key secrets by variable name; each one's Settings field is the lower-cased name."""


class EncryptedCache:
    """``name -> value`` held as AES-256-GCM ciphertexts that expire ``ttl_s`` seconds after
    being put (monotonic clock)."""

    def __init__(self, ttl_s: float) -> None:
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self._ttl_s = ttl_s
        self._entries: dict[str, tuple[bytes, bytes, float]] = {}

    def put(self, name: str, value: str) -> None:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, value.encode(), name.encode())
        self._entries[name] = (nonce, sealed, time.monotonic() + self._ttl_s)

    def get(self, name: str) -> str | None:
        """The value, or None when absent or expired."""
        entry = self._entries.get(name)
        if entry is None or entry[2] <= time.monotonic():
            self._entries.pop(name, None)
            return None
        return self._aead.decrypt(entry[0], entry[1], name.encode()).decode()

    def ciphertext(self, name: str) -> bytes | None:
        """The stored ciphertext (for tests that the value is not held in clear)."""
        entry = self._entries.get(name)
        return entry[1] if entry else None

    def drop(self, name: str | None = None) -> None:
        """Forget ``name``, or everything."""
        if name is None:
            self._entries.clear()
        else:
            self._entries.pop(name, None)


@dataclass(frozen=True)
class SecretInfo:
    """Where a secret comes from and how old it is (``age`` None when unknown)."""

    name: str
    source: str  # "env:NAME", "op://vault/item/field" or "unset"
    age: timedelta | None


class SecretStore:
    """Reads secrets with a ledger entry first; see the module docstring.

    ``env`` defaults to ``os.environ``; ``connect`` is needed only for ``op://`` references.
    """

    def __init__(
        self,
        ledger: Ledger,
        clock: Clock,
        *,
        env: Mapping[str, str] | None = None,
        connect: ConnectClient | None = None,
        ttl_s: float = 300.0,
    ) -> None:
        self._ledger, self._clock = ledger, clock
        self._env = os.environ if env is None else env
        self._connect = connect
        self._cache = EncryptedCache(ttl_s)
        self._dates: dict[str, datetime | None] = {}

    async def get(self, name: str, *, actor: str, purpose: str) -> str:
        """The value of secret ``name``. Ledgers the access first (``LedgerUnavailable`` means
        no read happens); ``SecretNotFound`` names the unset variable or empty reference."""
        await self._ledger.append("secret_access", {"secret": name, "actor": actor, "purpose": purpose})
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        value = await self._load(name)
        self._cache.put(name, value)
        hold_secret(value)
        return value

    async def active_keys(self, name: str, *, actor: str, purpose: str) -> list[str]:
        """``[current]``, or ``[current, previous]`` during a rotation window."""
        keys = [await self.get(name, actor=actor, purpose=purpose)]
        if self._env.get(f"{name}_PREVIOUS"):
            keys.append(await self.get(f"{name}_PREVIOUS", actor=actor, purpose=purpose))
        return keys

    def refresh(self, name: str | None = None) -> None:
        """Drop ``name`` (or every secret) from the cache; the next ``get`` reads the source."""
        self._cache.drop(name)

    async def info(self, name: str, *, actor: str) -> SecretInfo:
        """Source and age of ``name``; an ``op://`` secret is fetched (and ledgered) for its date."""
        raw = self._env.get(name)
        if not raw:
            return SecretInfo(name, "unset", None)
        if is_reference(raw):
            await self.get(name, actor=actor, purpose="secrets check")
            updated = self._dates.get(name)
            return SecretInfo(name, raw, self._clock.now() - updated if updated else None)
        return SecretInfo(name, f"env:{name}", rotation_age(name, self._env, self._clock.now()))

    async def _load(self, name: str) -> str:
        raw = self._env.get(name)
        if not raw:
            raise SecretNotFound(f"environment variable {name} is not set")
        if not is_reference(raw):
            return raw
        if self._connect is None:
            raise SecretNotFound(f"{name} is a 1Password reference but OP_CONNECT_HOST is not set")
        resolved = await self._connect.resolve(OpReference.parse(raw))
        self._dates[name] = resolved.updated_at
        return resolved.value


def rotation_age(name: str, env: Mapping[str, str], now: datetime) -> timedelta | None:
    """How long before ``now`` the secret in variable ``name`` was last rotated, by
    ``<NAME>_ROTATED_AT`` in ``env`` (ISO 8601, naive = UTC): the one reading of the date, for
    ``opsgate secrets check`` (:meth:`SecretStore.info`) and the readiness audit's
    ``provider_key_rotation``. None when the date is unset; ``ValueError`` when it is not ISO 8601."""
    rotated = env.get(f"{name}_ROTATED_AT")
    return now - _utc(rotated) if rotated else None


def _utc(moment: str) -> datetime:
    """An ISO 8601 date or date-time (naive = UTC); ``ValueError`` when it is not one."""
    parsed = datetime.fromisoformat(moment)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def connect_from_env(session: aiohttp.ClientSession, env: Mapping[str, str] | None = None) -> ConnectClient | None:
    """A Connect client from ``OP_CONNECT_HOST`` and ``OP_CONNECT_TOKEN``, or None when unset."""
    env = os.environ if env is None else env
    host, token = env.get("OP_CONNECT_HOST"), env.get("OP_CONNECT_TOKEN")
    return ConnectClient(session, host, hold_secret(token)) if host and token else None


async def resolve_secrets(
    settings: Settings, ledger: Ledger, clock: Clock, session: aiohttp.ClientSession | None, *,
    provider_keys: bool = True,
) -> Settings:
    """``settings`` with its secrets read through one :class:`SecretStore`: every read ledgered
    first (actor ``runtime``, the variable's name as ``secret``), ``op://`` references resolved
    through Connect (``OP_CONNECT_HOST``/``OP_CONNECT_TOKEN``, over ``session``, or a session of
    its own for the reads when None) and held by the sanitizer.

    Read: with ``provider_keys``, each configured provider key -- the built-in providers' and each
    named endpoint's (``[providers.<name>] api_key_env``) -- whether a value or a reference; and
    every secret setting of :data:`~opsgate.config.REFERENCE_SETTINGS` (the JWT secret, the IdP's
    HS256 secret, the master key, the notifiers' and the ledger anchor's credentials) that holds an
    ``op://`` reference, under its ``OPSGATE_*`` name; its resolved value must pass the setting's
    shape rule (:func:`~opsgate.config.check_secret`: 32 bytes for an HS256 key, ...). Unset ones
    stay unset; values set directly are not read again. A reference that cannot be resolved (no
    Connect, unknown vault/item/field, Connect unreachable or refusing) or resolves to a value
    that breaks its rule raises :class:`ConfigError`, one line ``<VARIABLE> (environment):
    <why>; ...`` naming every such setting (:func:`secret_problems`), never a value, so start-up
    ends with it."""
    resolved, problems = await _read_secrets(settings, ledger, clock, session, provider_keys, "runtime")
    if problems:
        raise ConfigError("; ".join(problems))
    return resolved


async def secret_problems(settings: Settings, ledger: Ledger, clock: Clock, *, actor: str) -> list[str]:
    """What :func:`resolve_secrets` (provider keys included) would refuse start-up for, one line
    per secret, read the same way (ledgered under ``actor``): ``opsgate config check``."""
    return (await _read_secrets(settings, ledger, clock, None, True, actor))[1]


def has_references(settings: Settings) -> bool:
    """Some secret of ``settings`` -- a provider key or a :data:`~opsgate.config.REFERENCE_SETTINGS`
    setting -- is an ``op://`` reference."""
    return bool(settings.references()) or any(is_reference(v) for v in provider_key_sources(settings).values())


async def _read_secrets(settings: Settings, ledger: Ledger, clock: Clock, session: aiohttp.ClientSession | None,
                        provider_keys: bool, actor: str) -> tuple[Settings, list[str]]:
    """``(settings resolved, problems)``: see :func:`resolve_secrets`."""
    env = provider_key_sources(settings) if provider_keys else {}
    references = {f"OPSGATE_{name.upper()}": (name, raw) for name, raw in settings.references().items()}
    env.update({variable: raw for variable, (_, raw) in references.items()})
    values: dict[str, str] = {}
    problems: list[str] = []
    async with AsyncExitStack() as stack:
        if session is None and any(is_reference(raw) for raw in env.values()):
            session = await stack.enter_async_context(make_session())
        connect = connect_from_env(session) if session is not None else None
        store = SecretStore(ledger, clock, env=env, connect=connect, ttl_s=settings.secret_cache_ttl_s)
        for variable in env:
            purpose = "settings" if variable in references else "provider client"
            try:
                values[variable] = await store.get(variable, actor=actor, purpose=purpose)
                if variable in references:
                    check_secret(references[variable][0], values[variable])
            except (SecretNotFound, SecretUnavailable) as exc:
                problems.append(f"{variable} (environment): {exc.detail}")
            except ValueError as exc:
                problems.append(f"{variable} (environment): its 1Password value {exc}")
    if problems:
        return settings, problems
    update: dict[str, object] = {name.lower(): SecretStr(values[name]) for name in PROVIDER_KEYS if name in values}
    update.update({name: SecretStr(values[variable]) for variable, (name, _) in references.items()})
    if provider_keys:
        update["providers"] = {
            name: config.with_key(values[config.api_key_env])
            if config.api_key_env is not None and config.api_key_env in values else config
            for name, config in settings.providers.items()
        }
    return settings.model_copy(update=update), problems


def provider_key_names(settings: Settings) -> list[str]:
    """The variable of every provider key the gateway reads, set or not: the built-in ones
    (:data:`PROVIDER_KEYS`) and each named endpoint's ``api_key_env``."""
    named = [c.api_key_env for c in settings.providers.values() if c.api_key_env is not None]
    return [*PROVIDER_KEYS, *dict.fromkeys(n for n in named if n not in PROVIDER_KEYS)]


def provider_key_sources(settings: Settings) -> dict[str, str]:
    """``variable -> value or op:// reference`` of every configured provider key: the built-in
    ones (``ANTHROPIC_API_KEY``, ...) as ``settings`` holds them, and each named endpoint's
    ``api_key_env`` variable (:meth:`~opsgate.config.ProviderConfig.api_key`)."""
    env = {name: key.get_secret_value() for name in PROVIDER_KEYS
           if (key := getattr(settings, name.lower())) is not None}
    for config in settings.providers.values():
        if config.api_key_env is not None and (raw := config.api_key()) is not None:
            env[config.api_key_env] = raw
    return env
