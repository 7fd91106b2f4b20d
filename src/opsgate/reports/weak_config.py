"""Settings that weaken security, read from the running :class:`~opsgate.config.Settings`.

Each finding is ``{"setting", "value", "why"}`` with a value safe to print (never a secret).
Rules: CORS (a wildcard or non-https origin), TLS (a provider or notification endpoint that is not
https, session cookies without ``Secure``, SMTP without STARTTLS), and debug-like modes (provider
sandboxes in place of real providers, access tokens living longer than the seed's 1 hour, a
refresh reuse grace long enough to hide a stolen token).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from opsgate.config import Settings

ACCESS_TOKEN_TTL_S = 3600
MAX_REUSE_GRACE_S = 60.0
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def weak_settings(settings: Settings) -> list[dict[str, str]]:
    """Every finding of the rules above, in a stable order (empty when none applies)."""
    found: list[dict[str, str]] = []
    for origin in settings.cors_origins:
        if origin.strip() == "*":
            found.append(_f("cors_origins", origin, "a wildcard origin lets any site call the API"))
        elif urlsplit(origin).scheme != "https" and not _loopback(origin):
            found.append(
                _f("cors_origins", origin, "a plain-http origin can be impersonated on the network")
            )
    for name in (
        "anthropic_base_url",
        "deepseek_base_url",
        "gemini_base_url",
        "pagerduty_url",
        "twilio_base_url",
    ):
        url = getattr(settings, name)
        if urlsplit(url).scheme != "https" and not _loopback(url):
            found.append(_f(name, url, "not https: requests and keys would travel in clear"))
    if not settings.session_cookie_secure:
        found.append(
            _f("session_cookie_secure", "false", "session cookies would be sent over plain http")
        )
    if settings.smtp_host and not settings.smtp_starttls:
        found.append(_f("smtp_starttls", "false", "alert email travels without TLS"))
    if settings.sandbox:
        found.append(
            _f(
                "sandbox",
                "true",
                "providers are loopback sandboxes (a test mode, never production)",
            )
        )
    if settings.access_token_ttl_s > ACCESS_TOKEN_TTL_S:
        found.append(
            _f(
                "access_token_ttl_s",
                str(settings.access_token_ttl_s),
                "access tokens live longer than the 1 hour policy",
            )
        )
    if settings.refresh_reuse_grace_s > MAX_REUSE_GRACE_S:
        found.append(
            _f(
                "refresh_reuse_grace_s",
                str(settings.refresh_reuse_grace_s),
                f"refresh token reuse goes undetected for more than {MAX_REUSE_GRACE_S:g} s",
            )
        )
    return found


def _f(setting: str, value: str, why: str) -> dict[str, str]:
    return {"setting": setting, "value": value, "why": why}


def _loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in LOOPBACK
