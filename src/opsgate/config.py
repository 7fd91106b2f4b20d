"""Settings from ``OPSGATE_*`` environment variables and an optional ``opsgate.toml``.

Provider credentials and endpoints use the providers' conventional variable names
(``ANTHROPIC_API_KEY``, ``ANTHROPIC_BASE_URL``, ``DEEPSEEK_API_KEY``, ``DEEPSEEK_BASE_URL``,
``GEMINI_API_KEY``, ``GEMINI_BASE_URL``). Precedence: explicit arguments, environment, then
``opsgate.toml`` in the working directory (or the file named by ``OPSGATE_CONFIG``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Literal

import phonenumbers
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_PSEUDONYMISED = (
    "email-compose", "email-classify", "email-respond", "calendar-prep", "calendar-time",
)
"""Operations whose prompts are pseudonymised unless ``privacy_pseudonymise`` says otherwise."""
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""An environment variable's name (a named endpoint's ``api_key_env``, ``opsgate secrets check``'s names)."""
REFERENCE_SETTINGS = (
    "jwt_secret", "idp_hs256_secret", "master_key", "ledger_discord_webhook_url", "ledger_discord_bot_token",
    "discord_webhook_url", "pagerduty_routing_key", "twilio_auth_token", "smtp_password",
)
"""Secret settings that may hold an ``op://`` 1Password reference instead of the value (the
provider keys too, :data:`opsgate.security.secrets.PROVIDER_KEYS`): resolved through the secrets
layer at start-up (:func:`opsgate.security.secrets.resolve_secrets`) and read through
:meth:`Settings.secret`, which refuses one still unresolved. ``redaction_key`` is not one: the
sanitizer needs it before anything is resolved."""


class ProviderConfig(BaseModel):
    """One ``[providers.<name>]`` table of ``opsgate.toml``: a named OpenAI-compatible endpoint
    (vLLM, Ollama, a hosted OpenAI-compatible API).

    ``base_url`` is https, or http on loopback only (checked when the adapter is built);
    ``api_key_env`` names the environment variable holding the key or an ``op://`` 1Password
    reference to it, resolved at start-up like the built-in providers' keys
    (:func:`opsgate.security.secrets.resolve_secrets`); the key is sent only in the
    ``Authorization: Bearer`` header (unset: no key is sent); ``json_mode`` is how a JSON answer
    is asked for (``json_schema`` per the OpenAI Chat Completions reference, ``json_object`` for
    endpoints that only know JSON mode); ``context_window`` (tokens, optional) is what the endpoint
    accepts per request, prompt and answer together (vLLM's ``--max-model-len``): prompts that may
    not fit skip it (:mod:`opsgate.routing.windows`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["openai-compatible"]
    base_url: str
    api_key_env: str | None = Field(default=None, pattern=ENV_NAME)
    json_mode: Literal["json_schema", "json_object"] = "json_schema"
    context_window: int | None = Field(default=None, ge=1)
    _key: SecretStr | None = PrivateAttr(default=None)  # resolved by the secrets layer; never dumped

    def api_key(self) -> str | None:
        """The endpoint's key: once resolved (:meth:`with_key`), the value the secrets layer read;
        before, the value of its ``api_key_env`` variable as the process environment holds it at
        each call, an ``op://`` reference included (``None`` when it names none or the variable is
        unset or empty). The one place it is read: the secrets layer resolves it, the provider
        registry sends it, and the sanitizer holds it
        (:func:`opsgate.security.sanitizer.settings_secrets`)."""
        if self._key is not None:
            return self._key.get_secret_value()
        if self.api_key_env is None:
            return None
        return os.environ.get(self.api_key_env) or None

    def with_key(self, key: str) -> ProviderConfig:
        """This endpoint with its key resolved to ``key`` (kept out of :meth:`model_dump`, so the
        ledgered routing configuration never holds it)."""
        resolved = self.model_copy()
        resolved._key = SecretStr(key)
        return resolved


class RouteConfig(BaseModel):
    """One ``[routes.<operation>]`` (or ``[routes.default]``) table: ``chain`` of
    ``"provider/model"`` targets in order of preference, the per-attempt ``timeout_s`` (seconds),
    ``max_attempts_per_target`` and the whole call's ``total_timeout_s``. An unset field of an
    operation's route inherits ``routes.default``'s, whose unset fields take the built-in defaults
    (see :mod:`opsgate.routing.policy`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chain: tuple[str, ...] | None = Field(default=None, min_length=1)
    timeout_s: float | None = Field(default=None, gt=0)
    max_attempts_per_target: int | None = Field(default=None, ge=1)
    total_timeout_s: float | None = Field(default=None, gt=0)

    @field_validator("chain")
    @classmethod
    def _targets(cls, chain: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return _check_targets(chain)


def _check_targets(chain: tuple[str, ...] | None) -> tuple[str, ...] | None:
    for target in chain or ():
        provider, _, model = target.partition("/")
        if not provider or not model:
            raise ValueError(f"target {target!r} must be written 'provider/model'")
    return chain


class VariantConfig(BaseModel):
    """One ``[variants.<operation>.<name>]`` table: a variant of the operation is a ``chain`` of
    ``"provider/model"`` targets (unset: the operation's route chain; timeouts always come from
    the route) plus the ``prompt`` version it renders (see :mod:`opsgate.operations.prompts`).
    Which variant is live and which is the candidate is rollout state, not configuration
    (:mod:`opsgate.rollout.variants`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chain: tuple[str, ...] | None = Field(default=None, min_length=1)
    prompt: str | None = None
    """A prompt version id; ``None``: the package's default for the operation
    (:func:`opsgate.operations.prompts.default_version`)."""

    @field_validator("chain")
    @classmethod
    def _targets(cls, chain: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return _check_targets(chain)


class PriceConfig(BaseModel):
    """One ``[prices."provider/model"]`` table: USD per million tokens as decimal strings (the
    fields of :mod:`opsgate.metering.prices`); unset cache fields are 0. It adds to, or overrides,
    the maintained price data (``genai-prices``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: Decimal
    output: Decimal
    cache_write: Decimal = Decimal(0)
    cache_write_1h: Decimal = Decimal(0)
    cache_read: Decimal = Decimal(0)

    @field_validator("input", "output", "cache_write", "cache_write_1h", "cache_read", mode="before")
    @classmethod
    def _decimal_string(cls, value: object) -> object:
        if not isinstance(value, str):
            raise ValueError("must be a decimal string (USD per million tokens), e.g. \"0.15\"")
        return value

    @field_validator("input", "output", "cache_write", "cache_write_1h", "cache_read")
    @classmethod
    def _non_negative(cls, value: Decimal) -> Decimal:
        if not value.is_finite() or value < 0:
            raise ValueError("must be a finite price >= 0")
        return value


class Settings(BaseSettings):
    """Every tunable of the gateway. Durations are seconds; money is micro-USD."""

    model_config = SettingsConfigDict(env_prefix="OPSGATE_", extra="ignore")

    database_url: str = "sqlite:///./opsgate.db"
    auto_migrate: bool = Field(
        default=True, description="Apply Alembic migrations at start-up (serve, run)."
    )

    jwt_secret: SecretStr | None = Field(
        default=None, description="HS256 signing key; when unset, a random key kept in jwt_secret_file."
    )
    jwt_secret_file: Path = Path(".opsgate/jwt-secret")
    jwt_issuer: str = "opsgate"
    jwt_audience: str = "opsgate-api"
    access_token_ttl_s: int = Field(default=3600, gt=0, description="Access token lifetime.")
    sign_in_failures_per_account: int = Field(
        default=10, ge=0, description="Failed password sign-ins per account per window before 429; 0 = off.")
    sign_in_failures_per_address: int = Field(
        default=100, ge=0, description="Failed password sign-ins per client address per window before 429; 0 = off.")
    sign_in_failure_window_s: int = Field(
        default=900, gt=0, description="Window of the failed sign-in limits (s).")

    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_API_KEY", "OPSGATE_ANTHROPIC_API_KEY")
    )
    anthropic_base_url: str = Field(
        default="https://api.anthropic.com",
        validation_alias=AliasChoices("ANTHROPIC_BASE_URL", "OPSGATE_ANTHROPIC_BASE_URL"),
    )
    deepseek_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DEEPSEEK_API_KEY", "OPSGATE_DEEPSEEK_API_KEY")
    )
    deepseek_base_url: str = Field(
        default="https://api.deepseek.com",
        validation_alias=AliasChoices("DEEPSEEK_BASE_URL", "OPSGATE_DEEPSEEK_BASE_URL"),
    )
    gemini_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("GEMINI_API_KEY", "OPSGATE_GEMINI_API_KEY")
    )
    gemini_base_url: str = Field(
        default="https://generativelanguage.googleapis.com",
        validation_alias=AliasChoices("GEMINI_BASE_URL", "OPSGATE_GEMINI_BASE_URL"),
    )

    config: Path = Field(
        default=Path("opsgate.toml"),
        description="The TOML file read for everything below (providers, routes, prices); absent = defaults.",
    )
    providers: dict[str, ProviderConfig] = Field(
        default_factory=dict, description="Named OpenAI-compatible endpoints ([providers.<name>])."
    )
    routes: dict[str, RouteConfig] = Field(
        default_factory=dict, description="[routes.default] and per-operation routes."
    )
    prices: dict[str, PriceConfig] = Field(
        default_factory=dict, description='Prices of "provider/model" targets (USD per MTok).'
    )
    may_serve: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description='[may_serve] "provider/model" = [model ids the provider may answer that model\'s '
                    'requests with]; budget reservations cover their prices too.',
    )
    prompts_dir: Path | None = Field(
        default=None, description="Operator prompt versions, <dir>/<operation>/<version>.txt (unset: the package's only)."
    )
    variants: dict[str, dict[str, VariantConfig]] = Field(
        default_factory=dict, description="[variants.<operation>.<name>]: route chain + prompt version."
    )

    log_level: str = Field(default="WARNING", description="Root log level (logs go to stderr).")
    sandbox: bool = Field(default=False, description="Serve providers from in-process sandboxes.")
    sandbox_faults: str = "none"
    sandbox_latency_seed: int | None = Field(
        default=None, description="Rehearsals only (the simulated clock): the seed of the sandboxes' simulated "
        "provider latency, spent on that clock (unset: none).")

    provider_timeout_s: float = Field(default=60.0, gt=0, description="Per provider attempt, unless a route sets one.")
    max_retry_wait_s: float = Field(default=30.0, ge=0, description="Longest wait before a retry.")
    breaker_failure_threshold: int = Field(default=5, ge=1, description="Failures in a row that open a breaker.")
    breaker_cooldown_s: float = Field(default=30.0, ge=0, description="An open breaker's wait before a trial.")
    breaker_max_cooldown_s: float = Field(
        default=300.0, ge=0,
        description="The longest a provider's Retry-After or rate-limit reset holds its breaker open (s).",
    )

    redis_url: str | None = Field(
        default=None, description="redis:// URL for counters shared by replicas (rate limits)."
    )
    rate_limit_key_prefix: str = "opsgate"
    rate_limit_user_rpm: int = Field(default=0, ge=0, description="Requests/min per user; 0 = off.")
    rate_limit_user_tpm: int = Field(default=0, ge=0, description="Tokens/min per user; 0 = off.")
    rate_limit_user_operation_rpm: int = Field(default=0, ge=0)
    rate_limit_user_operation_tpm: int = Field(default=0, ge=0)
    budget_reservation_ttl_s: float = Field(
        default=900.0, gt=0, description="An unsettled budget reservation expires after this."
    )
    token_count_timeout_s: float = Field(
        default=2.0, gt=0,
        description="Wait for a provider's token count when the byte bound does not fit a budget.",
    )

    ledger_synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL", description="SQLite PRAGMA synchronous for ledger commits (FULL or NORMAL)."
    )
    ledger_checkpoint_every: int = Field(
        default=1000, gt=0, description="Sign a checkpoint after this many new ledger entries."
    )
    ledger_checkpoint_interval_s: float = Field(
        default=60.0, gt=0, description="...or after this many seconds when any entry is new."
    )
    ledger_signing_key_file: Path = Field(
        default=Path(".opsgate/ledger-signing.key"),
        description="Ed25519 signer key (C2SP note format, mode 0600), outside the database.",
    )
    ledger_origin: str = Field(
        default="opsgate.local/ledger", description="Checkpoint origin line and signing key name."
    )
    ledger_anchor_dir: Path | None = Field(
        default=None, description="Append-only directory receiving a copy of every checkpoint."
    )
    ledger_discord_webhook_url: SecretStr | None = Field(
        default=None, description="Discord webhook URL receiving every checkpoint."
    )
    ledger_discord_bot_token: SecretStr | None = Field(
        default=None, description="Discord bot token with Read Message History in the webhook's channel: "
        "the checkpoints are read back from the channel itself.",
    )

    # security: refresh tokens, identity provider, browser sessions, CORS, keys
    refresh_token_ttl_s: int = Field(default=30 * 86400, gt=0, description="Refresh token lifetime.")
    refresh_reuse_grace_s: float = Field(
        default=10.0, ge=0, description="A rotated refresh token reused within this is a concurrent "
        "refresh (new sibling token), later it revokes the whole family."
    )
    token_clock_leeway_s: float = Field(
        default=30.0, ge=0, le=300,
        description="Leeway for opsgate's own access tokens' exp/nbf/iat against this clock (s; RFC 7519 "
        "§4.1.4): a token issued by a replica whose clock runs ahead is valid at once on the others.",
    )
    idp_issuer: str | None = Field(default=None, description="External IdP `iss`; unset = IdP off.")
    idp_audience: str | None = None
    idp_hs256_secret: SecretStr | None = Field(default=None, description="IdP HS256 shared secret.")
    idp_jwks_url: str | None = Field(default=None, description="IdP JWKS URL (RS256/ES256 keys).")
    idp_algorithm: str = Field(default="RS256", description="Pinned JWKS algorithm: RS256 or ES256.")
    idp_clock_skew_s: float = Field(
        default=60.0, ge=0, le=300,
        description="Leeway for the IdP's exp/nbf/iat against this clock (s; RFC 7519 §4.1.4).",
    )
    idp_role_claim: str | None = Field(
        default=None, description="Claim holding user|operator|admin; unset = every IdP user is `user`."
    )
    master_key: SecretStr | None = Field(
        default=None, description="Base64 256-bit key wrapping the data keys; else master_key_file."
    )
    master_key_file: Path = Path(".opsgate/master-key")
    key_rotation_days: int = Field(default=30, gt=0, description="Data key rotation policy (days).")
    session_ttl_s: int = Field(default=8 * 3600, gt=0, description="Dashboard session lifetime.")
    session_cookie_secure: bool = Field(default=True, description="Secure flag on session cookies.")
    session_samesite: Literal["strict", "lax"] = "strict"
    cors_origins: list[str] = Field(
        default_factory=list, description="Exact origins (scheme://host[:port]) allowed by CORS."
    )

    # monitoring: health window, alert rules, notification channels, worker
    metrics_token_file: Path | None = Field(
        default=None,
        description="File holding the bearer token GET /metrics accepts besides an operator JWT "
        "(a scraper's credential that does not expire; `opsgate keys metrics-token` creates it).",
    )
    health_window_s: int = Field(default=3600, gt=0, description="Default HealthMetrics window.")
    alert_min_requests: int = Field(
        default=20, ge=1, description="Requests a window needs before a rate/latency rule fires."
    )
    alert_error_rate_p2_pct: Decimal = Field(default=Decimal(1), description="Error rate > this: P2, page.")
    alert_error_rate_p1_pct: Decimal = Field(default=Decimal(5), description="Error rate > this: P1.")
    alert_p99_latency_ms: int = Field(default=5000, gt=0, description="p99 > this: warning (P2).")
    alert_cost_discrepancy_pct: Decimal = Field(
        default=Decimal(1), description="Reconciliation discrepancy > this: investigation (P2)."
    )
    alert_provider_unavailable_s: int = Field(
        default=1800, gt=0, description="A provider unavailable this long is demoted (fallback)."
    )
    alert_repeat_interval_s: int = Field(
        default=4 * 3600, gt=0, description="Re-send an unacknowledged open incident this often."
    )
    alert_eval_interval_s: float = Field(default=60.0, gt=0, description="Worker: alert rules cadence.")
    canary_eval_interval_s: float = Field(
        default=300.0, gt=0, description="Worker: canary metric evaluation cadence during a rollout."
    )
    canary_min_requests: int = Field(
        default=100, ge=1, description="Calls a cohort needs before the canary controller judges it."
    )
    canary_rollback_error_pct: Decimal = Field(
        default=Decimal(1), ge=0, le=100, description="Canary error rate > this: rollback (the seed's 1 %)."
    )
    canary_max_p99_ratio: float = Field(default=2.0, gt=0, description="Canary p99 > this x control's: rollback.")
    canary_max_cost_ratio: float = Field(
        default=1.5, gt=0, description="Variant rollouts: cost per call > this x the live variant's: rollback."
    )
    canary_max_repair_points: Decimal = Field(
        default=Decimal(5), ge=0, le=100,
        description="Variant rollouts: schema-repair rate > the live variant's + this (points): hold.",
    )
    canary_max_refusal_points: Decimal = Field(
        default=Decimal(5), ge=0, le=100,
        description="Variant rollouts: refusal rate > the live variant's + this (points): hold.",
    )
    worker_tick_s: float = Field(default=5.0, gt=0, description="Worker: outbox/escalation cadence.")
    worker_lock_file: Path = Path(".opsgate/worker.lock")
    provider_status_interval_s: float = Field(
        default=15.0, gt=0, description="Serve: how often breaker states are published."
    )
    outbox_max_backoff_s: float = Field(default=300.0, gt=0)
    outbox_give_up_s: float = Field(
        default=24 * 3600.0, gt=0, description="A notification still failing after this is failed."
    )
    discord_webhook_url: SecretStr | None = Field(default=None, description="Discord execute-webhook URL.")
    pagerduty_routing_key: SecretStr | None = None
    pagerduty_url: str = "https://events.pagerduty.com/v2/enqueue"
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from: str | None = Field(default=None, description="E.164 sender number.")
    twilio_base_url: str = "https://api.twilio.com"
    sms_to: list[str] = Field(default_factory=list, description="E.164 on-call numbers (P1 SMS).")
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = True
    email_from: str | None = None
    email_to: list[str] = Field(default_factory=list, description="Team addresses (P2 and above).")
    admin_email_to: list[str] = Field(default_factory=list, description="Last escalation level.")
    admin_sms_to: list[str] = Field(default_factory=list, description="Last escalation level (SMS).")

    # security: redaction and secrets policy
    redaction_key: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key (UTF-8 bytes) of the redaction correlation hashes; "
        "unset = a random key per process, so hashes correlate only within one process."
    )
    redaction_phone_regions: list[str] = Field(
        default_factory=lambda: ["US", "GB"],
        description="ISO 3166-1 alpha-2 regions national phone numbers are read in (redaction).",
    )
    privacy_pseudonymise: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PSEUDONYMISED),
        description="Operations whose prompts carry pseudonyms instead of email addresses, names "
        "and phone numbers (docs/privacy.md); secrets are masked for every operation.",
    )
    secret_max_age_days: int = Field(
        default=90, gt=0, description="`opsgate secrets check` warns about a secret older than this."
    )
    secret_cache_ttl_s: float = Field(
        default=300.0, gt=0, description="Seconds a secret stays in the encrypted in-memory cache."
    )

    @field_validator("may_serve")
    @classmethod
    def _may_serve(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        _check_targets(tuple(value))
        for key, models in value.items():
            for model in models:
                if not model.strip():
                    raise ValueError(f"{key!r}: a model id must not be empty")
        return value

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, url: str) -> str:
        try:
            parsed = make_url(url.replace("postgres://", "postgresql://", 1))
        except ArgumentError:  # its message repeats the URL, password included
            raise ValueError("is not a database URL (sqlite:///PATH or postgresql://USER@HOST/DB)") from None
        backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
        if (backend, driver) not in SUPPORTED_DATABASES:
            raise ValueError(f"{parsed.drivername!r} is not supported: use sqlite:///PATH or "
                             "postgresql://USER@HOST/DB (psycopg 3)")
        return url

    @field_validator(*REFERENCE_SETTINGS)
    @classmethod
    def _secret_shape(cls, secret: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # an op:// reference is checked once resolved (opsgate.security.secrets.resolve_secrets)
        if secret is not None and not is_reference(value := secret.get_secret_value()):
            check_secret(str(info.field_name), value)
        return secret

    @field_validator("redaction_key")
    @classmethod
    def _not_a_reference(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and is_reference(key.get_secret_value()):
            raise ValueError("cannot be a 1Password reference (op://): the sanitizer reads it before any "
                             "secret is resolved; set the key itself")
        return key

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        # redis-py's from_url refused any other scheme only when the rate limits were built, with
        # a traceback; its message is kept, the URL (which may hold a password) is not repeated
        if url and url.partition("://")[0].lower() not in REDIS_SCHEMES:
            raise ValueError(f"must start with {', '.join(f'{s}://' for s in REDIS_SCHEMES)}")
        return url

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        if level.upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level.upper()

    @field_validator("ledger_synchronous", mode="before")
    @classmethod
    def _pragma_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value  # PRAGMA values ignore case

    @field_validator("redaction_phone_regions")
    @classmethod
    def _known_regions(cls, regions: list[str]) -> list[str]:
        unknown = [r for r in regions if r.upper() not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown ISO 3166-1 alpha-2 region code(s) {unknown} (e.g. US, GB, DE)")
        return regions

    def references(self) -> dict[str, str]:
        """``setting -> op:// reference`` of every secret setting (:data:`REFERENCE_SETTINGS`)
        that holds a reference, not (yet) its value."""
        return {name: raw for name in REFERENCE_SETTINGS
                if (secret := getattr(self, name)) is not None and is_reference(raw := secret.get_secret_value())}

    def secret(self, name: str) -> str | None:
        """The value of secret setting ``name`` (a field of :data:`REFERENCE_SETTINGS`), None when
        unset: the one way code reads them. :class:`ConfigError` naming the setting (never the
        value) while it is still an ``op://`` reference, so a command that did not resolve it
        (:func:`opsgate.security.secrets.resolve_secrets`) refuses instead of using the
        reference's text as the secret."""
        secret: SecretStr | None = getattr(self, name)
        if secret is None:
            return None
        value = secret.get_secret_value()
        if is_reference(value):
            raise ConfigError(f"{setting_origin((name,))}: is a 1Password reference (op://) that was not "
                              "resolved; it is resolved at start-up (serve, run, worker, token and the "
                              "commands that open the database) through OP_CONNECT_HOST/OP_CONNECT_TOKEN")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = config_path()
        named = "OPSGATE_CONFIG" in os.environ
        where = f"{path} (OPSGATE_CONFIG)" if named else str(path)
        if named and not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "does not exist"
            raise ConfigFileError(f"configuration file {where} {what}")
        try:
            toml = TomlConfigSettingsSource(settings_cls, toml_file=path)
        except tomllib.TOMLDecodeError as exc:  # the message ends "(at line L, column C)"
            raise ConfigFileError(f"{where} is not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigFileError(f"{where} is not UTF-8 text: byte 0x{exc.object[exc.start]:02x} "
                                  f"at offset {exc.start}") from None
        except RecursionError:  # tomllib recurses per nested array or table
            raise ConfigFileError(f"{where} nests arrays and tables too deep to read") from None
        except OSError as exc:
            raise ConfigFileError(f"{where} cannot be read: {exc.strerror or type(exc).__name__}") from None
        return (init_settings, env_settings, toml)


def is_reference(value: str) -> bool:
    """``value`` is a 1Password secret reference (``op://vault/item/[section/]field``)."""
    return value.startswith("op://")


def check_secret(name: str, value: str) -> None:
    """The shape rule of secret setting ``name`` (a field of :data:`REFERENCE_SETTINGS`) for its
    ``value``, set directly or resolved from an ``op://`` reference: the HS256 keys
    (``jwt_secret``, ``idp_hs256_secret``) at least 32 bytes (RFC 7518 §3.2: as long as the hash
    output), the master key base64 of 32 bytes (:func:`master_key_bytes`); :class:`ValueError`
    saying which rule fails, never the value."""
    if name in HS256_SETTINGS and len(value.encode()) < 32:
        raise ValueError(f"must be at least 32 bytes long (it is {len(value.encode())})")
    if name == "master_key":
        master_key_bytes(value)


HS256_SETTINGS = ("jwt_secret", "idp_hs256_secret")

MASTER_KEY_BYTES = 32
"""The master key's length (AES-256, :mod:`opsgate.security.keyring`)."""


def master_key_bytes(text: str) -> bytes:
    """The master key written as ``text``: standard or URL-safe base64 of exactly
    :data:`MASTER_KEY_BYTES` bytes; :class:`ValueError` saying which rule fails (never the text)."""
    try:
        key = base64.b64decode(text, altchars=b"-_", validate=True)
    except ValueError:
        raise ValueError("is not base64") from None
    if len(key) != MASTER_KEY_BYTES:
        raise ValueError(f"must decode to exactly {MASTER_KEY_BYTES} bytes")
    return key


REDIS_SCHEMES = ("redis", "rediss", "unix")
"""The schemes redis-py's ``from_url`` takes (TCP, TLS, a Unix socket)."""

SUPPORTED_DATABASES = {("sqlite", "pysqlite"), ("postgresql", "psycopg")}
"""(backend, driver) pairs ``database_url`` may name; ``postgres://`` and ``postgresql://`` take
psycopg 3 (:func:`opsgate.store.db.normalise_url`)."""

LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
"""The ``log_level`` names (any case) of the standard :mod:`logging` levels."""


class ConfigError(ValueError):
    """A configuration the gateway cannot use: a setting (environment variable or ``opsgate.toml``
    value), the configuration file itself, or the database it names. The message is one line
    naming the variable or file and what is wrong, never a secret's value; the command line prints
    it and exits 2 (:mod:`opsgate.cli`)."""


class ConfigFileError(ConfigError):
    """``opsgate.toml`` (or ``$OPSGATE_CONFIG``) cannot be used: named by ``OPSGATE_CONFIG`` but
    missing, unreadable, not UTF-8 or not TOML (then with tomllib's line and column). Raised by
    ``Settings()``."""


def load_settings() -> Settings:
    """``Settings()``, or :class:`ConfigError` with one line for the first problem, naming the
    setting and where it came from: ``OPSGATE_LOG_LEVEL (environment): must be one of ...`` or
    ``routes.default.timeout_s (opsgate.toml): Input should be greater than 0``. Pydantic's
    messages are used without the input value, so a secret is never repeated."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        error = first.get("ctx", {}).get("error") if first["type"] == "value_error" else None
        raise ConfigError(f"{setting_origin(first['loc'])}: {error or first['msg']}") from None
    except SettingsError as exc:  # a list or table variable that is not JSON
        field = re.search(r'field "([^"]+)"', str(exc))
        name = setting_origin((field.group(1),)) if field else "environment"
        cause = exc.__cause__
        reason = f" ({cause.msg})" if isinstance(cause, json.JSONDecodeError) else ""
        raise ConfigError(f'{name}: must be JSON, e.g. ["a", "b"] or {{"k": 1}}{reason}') from None


def setting_origin(loc: tuple[int | str, ...]) -> str:
    """Where the setting at ``loc`` (a field name, then keys inside it) came from: the
    environment variable that is set, ``NAME (environment)``, else the dotted path and the
    configuration file, ``routes.default.timeout_s (opsgate.toml)``."""
    field = Settings.model_fields.get(str(loc[0]))
    alias = field.validation_alias if field is not None else None
    names = ([str(c) for c in alias.choices] if isinstance(alias, AliasChoices)
             else [f"OPSGATE_{loc[0]}".upper(), str(loc[0])])
    present = {name.upper() for name in os.environ}
    for name in names:
        if name.upper() in present:
            return f"{name.upper()} (environment)"
    return f"{'.'.join(str(p) for p in loc)} ({config_path()})"


def config_path() -> Path:
    """The TOML file settings are read from: ``$OPSGATE_CONFIG``, else ``./opsgate.toml``."""
    return Path(os.environ.get("OPSGATE_CONFIG", "opsgate.toml"))
