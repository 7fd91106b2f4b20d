""".env.example names every setting (and holds no values)."""

from pathlib import Path

from pydantic import AliasChoices

from opsgate.config import Settings

ENV_EXAMPLE = Path(__file__).resolve().parents[1] / ".env.example"


def _variable(name: str, field) -> str:  # type: ignore[no-untyped-def]
    alias = field.validation_alias
    return alias.choices[0] if isinstance(alias, AliasChoices) else f"OPSGATE_{name.upper()}"


def test_env_example_names_every_setting_without_values():
    entries = [line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")]
    assert all(value == "" for _, value in entries)
    named = {key for key, _ in entries}
    assert {_variable(n, f) for n, f in Settings.model_fields.items()} <= named
