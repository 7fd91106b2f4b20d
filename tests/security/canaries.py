"""Canaries: generated provider keys of each provider's shape, a password, an email address and a
phone number (all made at import, never real), and an email-compose body that carries them. A
test that drives a gateway with them asserts none of :data:`CANARIES` comes out anywhere.
:func:`shaped_secrets` makes, per call, a line with a secret of each further shape the sanitizer
knows."""

from __future__ import annotations

import secrets
import string

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


def _chars(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def shaped_secrets() -> dict[str, tuple[str, str, str]]:
    """``{name: (line, secret, placeholder)}``: a secret of each shape the sanitizer knows beyond
    the provider keys, generated in its vendor's documented shape (see ``RULES``), in the line
    it was found in by the outside probe that reported them reaching the provider."""
    b64 = string.ascii_letters + string.digits + "/+"
    upper, hexdigits = string.ascii_uppercase + string.digits, "0123456789abcdef"
    cut = _chars(9) + "&3xyz;Q9}zz"
    return {
        "cut password": (f"Tell Bob: the password is: {cut}", cut, "[PASSWORD_1]"),
        "cut token": (f"and the token: {_chars(18)},{_chars(9)}", "", "[TOKEN_1]"),
        "no colon": (f"the password is {_chars(10)}&{_chars(3)}!", "", "[PASSWORD_2]"),
        "dash": (f"Password - {_chars(12)}", "", "[PASSWORD_3]"),
        "german": (f"passwort: {_chars(12)}", "", "[PASSWORD_4]"),
        "passphrase": (f"the passphrase is correct {_chars(8, string.ascii_lowercase)} staple", "",
                       "[PASSWORD_5]"),
        "json": (f'{{"password": "{_chars(4)},{_chars(4)}}}{_chars(4)}"}}', "", "[PASSWORD_6]"),
        "stripe": (f"stripe sk_live_{_chars(24)}", "", "[API_KEY_1]"),
        "stripe restricted": (f"rk_live_{_chars(24)}", "", "[API_KEY_2]"),
        "gitlab": (f"glpat-{_chars(20)}", "", "[TOKEN_2]"),
        "huggingface": (f"hf_{_chars(34, string.ascii_letters)}", "", "[TOKEN_3]"),
        "npm": (f"npm_{_chars(36)}", "", "[TOKEN_4]"),
        "sendgrid": (f"SG.{_chars(22)}.{_chars(43)}", "", "[API_KEY_3]"),
        "twilio": (f"SK{_chars(32, '0123456789abcdef')}", "", "[API_KEY_4]"),
        "aws secret": (f"aws secret {_chars(39, b64)}K", "", "[SECRET_1]"),
        "ssn": ("SSN 123-45-6789", "123-45-6789", "[SSN_1]"),
        "redis url": (f"redis://{(pw := ':' + _chars(16))}@cache:6379/0", pw, "[CREDENTIAL_1]"),
        "@ in a url password": (f"amqp://{(cred := f'guest:{_chars(4)}@{_chars(8)}')}@rabbit:5672/",
                                cred, "[CREDENTIAL_2]"),
        "azure": (f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={(key := _chars(86, b64) + '==')}"
                  ";EndpointSuffix=core.windows.net", key, "[SECRET_2]"),
        "slack webhook": (f"https://hooks.slack.com/services/{(hook := slack_hook())}", hook, "[TOKEN_5]"),
        "discord webhook": (f"https://discord.com/api/webhooks/{(hook := discord_hook())}", hook, "[TOKEN_6]"),
        "slack app token": (f"xapp-1-A{_chars(10, upper)}-{_chars(13, string.digits)}-{_chars(64, hexdigits)}",
                            "", "[TOKEN_7]"),
    }


def slack_hook() -> str:
    """The credential path of a Slack incoming webhook URL: ``T<team>/B<bot>/<24 characters>``."""
    upper = string.ascii_uppercase + string.digits
    return f"T{_chars(10, upper)}/B{_chars(10, upper)}/{_chars(24)}"


def discord_hook() -> str:
    """The credential path of a Discord webhook URL: ``<18-digit id>/<68-character token>``."""
    return f"{_chars(18, string.digits)}/{_chars(68, string.ascii_letters + string.digits + '-_')}"


def secret_in(name: str, line: str, secret: str) -> str:
    """The secret in ``line``: given, or the line's last word (its end for prose)."""
    if secret:
        return secret
    if name == "passphrase":
        return line.split(" is ", 1)[1]
    if name == "json":
        return line.split('": "', 1)[1][:-2]
    return line.split()[-1]

