"""Canaries: generated provider keys of each provider's shape, a password, an email address and a
phone number (all made at import, never real), and an email-compose body that carries them. A
test that drives a gateway with them asserts none of :data:`CANARIES` comes out anywhere."""

from __future__ import annotations

import secrets

KEYS = {
    "anthropic_api_key": "sk-ant-api03-" + secrets.token_urlsafe(70),
    "deepseek_api_key": "sk-" + secrets.token_hex(16),
    "gemini_api_key": "AIza" + secrets.token_urlsafe(27)[:35],
}
PASSWORD = "pw-" + secrets.token_urlsafe(12)
EMAIL = f"canary.{secrets.token_hex(4)}@example.org"
PHONE = "+44 20 7946 0958"
CANARIES = [*KEYS.values(), PASSWORD, EMAIL, "2079460958", PHONE]


def compose(extra: str = "") -> dict:
    return {
        "instructions": f"Ask {EMAIL} (phone {PHONE}) to reset password={PASSWORD}. {extra}",
        "to": [EMAIL],
        "tone": "friendly",
        "language": "en",
    }
