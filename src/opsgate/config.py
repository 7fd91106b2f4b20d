"""Settings from ``OPSGATE_*`` environment variables and an optional ``opsgate.toml``.

Provider credentials and endpoints use the providers' conventional variable names
(``ANTHROPIC_API_KEY``, ``ANTHROPIC_BASE_URL``, ``DEEPSEEK_API_KEY``, ``DEEPSEEK_BASE_URL``,
``GEMINI_API_KEY``, ``GEMINI_BASE_URL``). Precedence: explicit arguments, environment, then
``opsgate.toml`` in the working directory (or the file named by ``OPSGATE_CONFIG``).
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Literal
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_PSEUDONYMISED = (
    "email-compose", "email-classify", "email-respond", "calendar-prep", "calendar-time",
)
"""Operations whose prompts are pseudonymised unless ``privacy_pseudonymise`` says otherwise."""


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
    access_token_ttl_s: int = 3600

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

    log_level: str = Field(default="WARNING", description="Root log level (logs go to stderr).")
    sandbox: bool = Field(default=False, description="Serve providers from in-process sandboxes.")
    sandbox_faults: str = "none"

    provider_timeout_s: float = 60.0
    max_retry_wait_s: float = 30.0
    breaker_failure_threshold: int = 5
    breaker_cooldown_s: float = 30.0

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

    ledger_synchronous: str = Field(
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

    # security: refresh tokens, identity provider, browser sessions, CORS, keys
    refresh_token_ttl_s: int = Field(default=30 * 86400, gt=0, description="Refresh token lifetime.")
    refresh_reuse_grace_s: float = Field(
        default=10.0, ge=0, description="A rotated refresh token reused within this is a concurrent "
        "refresh (new sibling token), later it revokes the whole family."
    )
    idp_issuer: str | None = Field(default=None, description="External IdP `iss`; unset = IdP off.")
    idp_audience: str | None = None
    idp_hs256_secret: SecretStr | None = Field(default=None, description="IdP HS256 shared secret.")
    idp_jwks_url: str | None = Field(default=None, description="IdP JWKS URL (RS256/ES256 keys).")
    idp_algorithm: str = Field(default="RS256", description="Pinned JWKS algorithm: RS256 or ES256.")
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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("OPSGATE_CONFIG", "opsgate.toml"))
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_file),
        )
