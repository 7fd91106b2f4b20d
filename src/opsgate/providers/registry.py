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

#: Default model per provider, as the providers' model and deprecation pages listed them on
#: 2026-12-04 (docs/providers.md): Claude Opus 5, DeepSeek V4.1 Flash, Gemini 3.8 Flash.
ANTHROPIC_DEFAULT_MODEL = "claude-opus-5"
DEEPSEEK_DEFAULT_MODEL = "deepseek-flash"
GEMINI_DEFAULT_MODEL = "gemini-3.8-flash"
DEFAULT_MODELS: dict[str, str] = {
    "anthropic": ANTHROPIC_DEFAULT_MODEL,
    "deepseek": DEEPSEEK_DEFAULT_MODEL,
    "gemini": GEMINI_DEFAULT_MODEL,
}


def build_providers(
    settings: Settings, session: aiohttp.ClientSession, *, clock: Clock | None = None
) -> dict[str, Provider]:
    """Return the ``anthropic``, ``deepseek`` and ``gemini`` adapters plus one
    :class:`OpenAICompatProvider` per ``[providers.<name>]`` table, all sharing ``session``.

    Base URLs come from settings and are validated (``ValueError`` on a non-https, non-loopback
    URL). A provider whose key is unset is still built; each call then raises
    ``AuthenticationFailed`` ("ANTHROPIC_API_KEY is not set", ...) without a network call, so the
    router falls back to the next provider. A named endpoint without ``api_key_env`` sends no key.
    """
    return {**_builtin(settings, session, clock), **_named(settings, session, clock)}


def _builtin(
    settings: Settings, session: aiohttp.ClientSession, clock: Clock | None
) -> dict[str, Provider]:
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
            thinking="disabled",
            clock=clock,
        ),
        "gemini": GeminiProvider(
            session,
            _secret(settings.gemini_api_key),
            base_url=settings.gemini_base_url,
            clock=clock,
        ),
    }


def _named(
    settings: Settings, session: aiohttp.ClientSession, clock: Clock | None
) -> dict[str, Provider]:
    return {
        name: OpenAICompatProvider(
            name,
            session,
            config.base_url,
            config.api_key(),
            json_mode=config.json_mode,
            key_env=config.api_key_env,
            key_required=config.api_key_env is not None,
            clock=clock,
        )
        for name, config in settings.providers.items()
    }


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
