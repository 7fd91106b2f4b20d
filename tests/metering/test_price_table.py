"""Loading and validating the price table."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from opsgate.errors import OpsgateError
from opsgate.metering.errors import PriceTableError, UnknownModelPrice
from opsgate.metering.prices import PriceTable

VALID = """
version = "test.1"
[providers.acme]
source = "https://acme.example/pricing"
read_on = 2026-11-30
[models.acme-1]
provider = "acme"
input = "3"
output = "15"
cache_write = "3.75"
cache_write_1h = "6"
cache_read = "0.30"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.toml"
    path.write_text(text, "utf-8")
    return path


def test_packaged_table_prices_every_default_model() -> None:
    table = PriceTable.load()
    opus = table.price_for("claude-opus-4-5")
    assert (opus.input, opus.output, opus.cache_write, opus.cache_write_1h, opus.cache_read) == (
        Decimal("5"),
        Decimal("25"),
        Decimal("6.25"),
        Decimal("10"),
        Decimal("0.50"),
    )
    assert table.price_for("deepseek-chat").cache_read == Decimal("0.028")
    assert table.price_for("deepseek-reasoner").output == Decimal("0.42")
    assert table.price_for("gemini-2.0-flash").cache_read == Decimal("0.025")
    assert {s.provider: s.read_on for s in table.sources.values()} == {
        "anthropic": date(2026, 11, 30),
        "deepseek": date(2026, 11, 30),
        "gemini": date(2026, 11, 30),
    }


def test_anthropic_cache_prices_keep_their_documented_ratios() -> None:
    opus = PriceTable.load().price_for("claude-opus-4-5")
    assert opus.cache_write == opus.input * Decimal("1.25")
    assert opus.cache_write_1h == opus.input * 2
    assert opus.cache_read == opus.input * Decimal("0.1")


def test_load_from_a_path(tmp_path: Path) -> None:
    table = PriceTable.load(write(tmp_path, VALID))
    assert table.version == "test.1"
    assert table.price_for("acme-1").cache_write == Decimal("3.75")
    assert table.sources["acme"].source == "https://acme.example/pricing"


def test_unknown_model_is_an_opsgate_error() -> None:
    with pytest.raises(UnknownModelPrice, match="gpt-9") as info:
        PriceTable.load().price_for("gpt-9")
    assert isinstance(info.value, OpsgateError)
    assert info.value.code == "unknown_model_price"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('cache_read = "0.30"', 'cache_read = "-0.30"', r"'acme-1': 'cache_read' must be finite"),
        ('output = "15"', "output = 15.0", r"'acme-1': 'output' must be a decimal string"),
        ('input = "3"', 'input = "three"', r"'acme-1': 'input' is not a decimal"),
        ('input = "3"', 'input = "NaN"', r"'acme-1': 'input' must be finite"),
        ('output = "15"', 'output = "1000000.01"', r"'acme-1': 'output' .* over \$1 per token"),
        ('cache_write_1h = "6"\n', "", r"'acme-1': 'cache_write_1h' must be a decimal string"),
        ('provider = "acme"', 'provider = "other"', r"'acme-1': 'provider' must name"),
        (
            'cache_read = "0.30"',
            'cache_read = "0.30"\ncache_hit = "1"',
            r"unknown field.*cache_hit",
        ),
        ('version = "test.1"', "", r"'version' must be a non-empty string"),
        ("read_on = 2026-11-30", 'read_on = "yesterday"', r"'acme': 'read_on' must be a TOML date"),
        (
            'source = "https://acme.example/pricing"',
            'source = "acme"',
            r"'source' must be an https",
        ),
    ],
)
def test_invalid_tables_are_refused_with_a_clear_message(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert old in VALID
    with pytest.raises(PriceTableError, match=message):
        PriceTable.load(write(tmp_path, VALID.replace(old, new)))


def test_a_price_of_exactly_one_dollar_per_token_is_allowed(tmp_path: Path) -> None:
    table = PriceTable.load(write(tmp_path, VALID.replace('output = "15"', 'output = "1000000"')))
    assert table.price_for("acme-1").output == Decimal(1_000_000)


def test_toml_syntax_errors_are_price_table_errors(tmp_path: Path) -> None:
    with pytest.raises(PriceTableError, match="not valid TOML"):
        PriceTable.load(write(tmp_path, "version = "))
