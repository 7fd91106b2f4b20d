"""Which model a sandbox says served a request, and which models it treats as retired.

Facts the providers published (read 2026-12-04; see docs/providers.md), so a sandbox run meets
today's providers: Google shut down the Gemini 2.0 Flash family on 2026-06-01 and answers
``gemini-2.5-flash`` with another model since 2026-12-01; Anthropic retired Claude Opus 4
(2026-06-15) and Opus 4.1 (2026-08-05); DeepSeek serves its legacy name ``deepseek-v4-flash``
with ``deepseek-flash``. Fault profile parts add more for tests (``retired:<provider>:<model>``,
``substitute:<provider>:<model>``, see :mod:`opsgate.sandbox.faults`).
"""

from __future__ import annotations

from opsgate.sandbox.faults import FaultProfile

RETIRED: dict[str, frozenset[str]] = {
    "anthropic": frozenset({"claude-opus-4-0", "claude-opus-4-20250514", "claude-opus-4-1",
                            "claude-opus-4-1-20250805"}),
    "deepseek": frozenset(),
    "gemini": frozenset({"gemini-2.0-flash", "gemini-2.0-flash-001", "gemini-2.0-flash-lite",
                         "gemini-2.0-flash-lite-001"}),
}
SERVED_AS: dict[str, dict[str, str]] = {
    "anthropic": {},
    "deepseek": {"deepseek-v4-flash": "deepseek-flash"},
    "gemini": {"gemini-2.5-flash": "gemini-3.5-flash"},
}


def served_model(provider: str, model: str, profile: FaultProfile) -> str | None:
    """The model the sandbox reports for a request to ``model`` (``None``: retired, answer the
    provider's 404)."""
    name = model.removeprefix("models/")
    if name in RETIRED[provider] or (provider, name) in profile.retired:
        return None
    return profile.substitute.get(provider) or SERVED_AS[provider].get(name, name)
