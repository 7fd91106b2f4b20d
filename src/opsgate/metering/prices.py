"""The versioned price table: what one token of each kind costs on each model.

Prices are read from TOML (the packaged ``prices.toml`` by default) as decimal *strings*, in USD
per million tokens, which is the same number as micro-USD per token. They become
:class:`decimal.Decimal` values; a TOML float is refused, because binary floats cannot hold prices
like 0.028 exactly. The file's shape::

    version = "2026-11-30.1"
    [providers.<name>]  source = "<pricing page URL>"  read_on = <date>
    [models.<id>]       provider = "<name>"  input = "5"  output = "25"  cache_write = "6.25"
                        cache_write_1h = "10"  cache_read = "0.50"
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from opsgate.metering.errors import PriceTableError, UnknownModelPrice

PRICE_FIELDS = ("input", "output", "cache_write", "cache_write_1h", "cache_read")
"""The priced fields of every model, in USD per million tokens."""

MAX_USD_PER_MTOK = Decimal(1_000_000)
"""A price above this is more than $1 per token: almost surely a unit mistake (USD per token
written where USD per million tokens was meant), so loading refuses it."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One model's prices in USD per million tokens (== micro-USD per token), all >= 0."""

    model: str
    provider: str
    input: Decimal
    output: Decimal
    cache_write: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal


@dataclass(frozen=True, slots=True)
class PriceSource:
    """Where a provider's prices were read (its pricing page) and on which day."""

    provider: str
    source: str
    read_on: date


class PriceTable:
    """An immutable, validated price table. Build it with :meth:`load`."""

    def __init__(
        self, version: str, prices: Mapping[str, ModelPrice], sources: Mapping[str, PriceSource]
    ) -> None:
        self.version = version
        self.prices: Mapping[str, ModelPrice] = MappingProxyType(dict(prices))
        self.sources: Mapping[str, PriceSource] = MappingProxyType(dict(sources))

    @classmethod
    def load(cls, path: Path | str | None = None) -> PriceTable:
        """Read and validate the table at ``path`` (default: the packaged ``prices.toml``).

        Raises :class:`PriceTableError` naming the model/provider and field on any problem.
        """
        if path is None:
            text = resources.files("opsgate.metering").joinpath("prices.toml").read_text("utf-8")
        else:
            text = Path(path).read_text("utf-8")
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PriceTableError(f"price table is not valid TOML: {exc}") from exc
        return cls.from_mapping(raw)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> PriceTable:
        """Validate an already parsed table (the TOML document's shape, see the module doc)."""
        version = raw.get("version")
        if not isinstance(version, str) or not version:
            raise PriceTableError("price table: 'version' must be a non-empty string")
        sources = {name: _source(name, entry) for name, entry in _table(raw, "providers").items()}
        prices = {
            model: _model_price(model, entry, sources)
            for model, entry in _table(raw, "models").items()
        }
        return cls(version, prices, sources)

    def price_for(self, model: str) -> ModelPrice:
        """The prices of ``model``; raises :class:`UnknownModelPrice` when it has none."""
        try:
            return self.prices[model]
        except KeyError:
            raise UnknownModelPrice(f"no price for model {model!r}") from None


def _table(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict) or not value:
        raise PriceTableError(f"price table: '{key}' must be a non-empty table")
    return value


def _source(name: str, entry: Any) -> PriceSource:
    if not isinstance(entry, dict):
        raise PriceTableError(f"provider {name!r}: must be a table")
    source, read_on = entry.get("source"), entry.get("read_on")
    if not isinstance(source, str) or not source.startswith("https://"):
        raise PriceTableError(f"provider {name!r}: 'source' must be an https URL")
    if not isinstance(read_on, date):
        raise PriceTableError(f"provider {name!r}: 'read_on' must be a TOML date")
    return PriceSource(name, source, read_on)


def _model_price(model: str, entry: Any, sources: Mapping[str, PriceSource]) -> ModelPrice:
    if not isinstance(entry, dict):
        raise PriceTableError(f"model {model!r}: must be a table")
    provider = entry.get("provider")
    if not isinstance(provider, str) or provider not in sources:
        raise PriceTableError(f"model {model!r}: 'provider' must name a [providers.*] table")
    unknown = set(entry) - {"provider", *PRICE_FIELDS}
    if unknown:
        raise PriceTableError(f"model {model!r}: unknown field(s) {sorted(unknown)}")
    values = {name: _price(model, name, entry.get(name)) for name in PRICE_FIELDS}
    return ModelPrice(model=model, provider=provider, **values)


def _price(model: str, field: str, value: Any) -> Decimal:
    if not isinstance(value, str):
        raise PriceTableError(
            f"model {model!r}: {field!r} must be a decimal string (USD per million tokens)"
        )
    try:
        price = Decimal(value)
    except InvalidOperation:
        raise PriceTableError(f"model {model!r}: {field!r} is not a decimal: {value!r}") from None
    if not price.is_finite() or price < 0:
        raise PriceTableError(f"model {model!r}: {field!r} must be finite and >= 0, got {value}")
    if price > MAX_USD_PER_MTOK:
        raise PriceTableError(
            f"model {model!r}: {field!r} = {value} USD per million tokens is over $1 per token; "
            "was USD per token written by mistake?"
        )
    return price
