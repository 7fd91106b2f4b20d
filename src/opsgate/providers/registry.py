"""Build the configured provider adapters from :class:`opsgate.config.Settings`."""

from __future__ import annotations

import aiohttp
from pydantic import SecretStr

from opsgate.clock import Clock
from opsgate.config import Settings
from opsgate.providers.anthropic import AnthropicProvider
from opsgate.providers.base import Provider
from opsgate.providers.gemini import GeminiProvider
from opsgate.providers.openai_compat import OpenAICompatProvider

#: Default model per provider: Claude Opus 4.5, DeepSeek V3.2 (non-thinking), Gemini 2.0 Flash.
ANTHROPIC_DEFAULT_MODEL = "claude-opus-4-5"
DEEPSEEK_DEFAULT_MODEL = "deepseek-chat"
GEMINI_DEFAULT_MODEL = "gemini-2.0-flash"
DEFAULT_MODELS: dict[str, str] = {
    "anthropic": ANTHROPIC_DEFAULT_MODEL,
    "deepseek": DEEPSEEK_DEFAULT_MODEL,
    "gemini": GEMINI_DEFAULT_MODEL,
}


def build_providers(
    settings: Settings, session: aiohttp.ClientSession, *, clock: Clock | None = None
) -> dict[str, Provider]:
    """Return ``{"anthropic", "deepseek", "gemini"}`` adapters sharing ``session``.

    Base URLs come from settings and are validated (``ValueError`` on a non-https, non-loopback
    URL). A provider whose key is unset is still built; each call then raises
    ``AuthenticationFailed`` ("ANTHROPIC_API_KEY is not set", ...) without a network call, so the
    router falls back to the next provider.
    """
    return {
        "anthropic": AnthropicProvider(
            session,
            _secret(settings.anthropic_api_key),
            base_url=settings.anthropic_base_url,
            clock=clock,
        ),
        "deepseek": OpenAICompatProvider(
            "deepseek",
            session,
            settings.deepseek_base_url,
            _secret(settings.deepseek_api_key),
            json_mode="json_object",
            key_env="DEEPSEEK_API_KEY",
            clock=clock,
        ),
        "gemini": GeminiProvider(
            session,
            _secret(settings.gemini_api_key),
            base_url=settings.gemini_base_url,
        ),
    }


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
