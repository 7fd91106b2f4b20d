"""Prices: the maintained ``genai-prices`` data, opsgate's packaged table and the operator's
``[prices]`` on top (:class:`PriceBook`), and the packaged versioned table itself (:class:`PriceTable`).

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

import hashlib
import math
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import genai_prices
import orjson
from genai_prices import data_snapshot as genai_data_snapshot
from genai_prices import types as genai_types

from opsgate.config import Settings
from opsgate.metering.errors import PriceTableError, UnknownModelPrice
from opsgate.providers.base import normalise_model

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


class PriceSource(Protocol):
    """What reservations need: ``price_for(key)`` -> :class:`ModelPrice` or
    :class:`UnknownModelPrice` (a :class:`PriceTable` by model id, a :class:`PriceBook` by
    ``"provider/model"``)."""

    def price_for(self, key: str) -> ModelPrice: ...

    def output_bound(self, key: str, max_tokens: int) -> int:
        """The most output tokens a request capped at ``max_tokens`` to ``key`` is reserved for
        (``max_tokens`` unless the target was seen to bill more, :meth:`PriceBook.observe_output`)."""
        ...


@dataclass(frozen=True, slots=True)
class ProviderPriceSource:
    """Where a provider's prices were read (its pricing page) and on which day."""

    provider: str
    source: str
    read_on: date


class PriceTable:
    """An immutable, validated price table. Build it with :meth:`load`."""

    def __init__(
        self, version: str, prices: Mapping[str, ModelPrice], sources: Mapping[str, ProviderPriceSource]
    ) -> None:
        self.version = version
        self.prices: Mapping[str, ModelPrice] = MappingProxyType(dict(prices))
        self.sources: Mapping[str, ProviderPriceSource] = MappingProxyType(dict(sources))

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

    def output_bound(self, key: str, max_tokens: int) -> int:
        """``max_tokens``: a static table learns nothing about a target's answers."""
        return max_tokens

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


def _source(name: str, entry: Any) -> ProviderPriceSource:
    if not isinstance(entry, dict):
        raise PriceTableError(f"provider {name!r}: must be a table")
    source, read_on = entry.get("source"), entry.get("read_on")
    if not isinstance(source, str) or not source.startswith("https://"):
        raise PriceTableError(f"provider {name!r}: 'source' must be an https URL")
    if not isinstance(read_on, date):
        raise PriceTableError(f"provider {name!r}: 'read_on' must be a TOML date")
    return ProviderPriceSource(name, source, read_on)


def _model_price(model: str, entry: Any, sources: Mapping[str, ProviderPriceSource]) -> ModelPrice:
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


GENAI_PRICES_PROVIDERS: Mapping[str, str] = MappingProxyType(
    {"anthropic": "anthropic", "deepseek": "deepseek", "gemini": "google"}
)
"""opsgate's built-in provider -> its id in ``genai-prices``. Only these are priced from the
maintained data; any other provider (a self-hosted endpoint) is priced explicitly or not at all."""

_GENAI_FIELDS = (
    ("input", "input_mtok"),
    ("output", "output_mtok"),
    ("cache_write", "cache_write_mtok"),
    ("cache_write_1h", "cache_write_1h_mtok"),
    ("cache_read", "cache_read_mtok"),
)


@dataclass(frozen=True, slots=True)
class ResolvedPrice:
    """The price one call pays and where it came from.

    ``source`` is ``opsgate.toml`` (the operator's ``[prices]``), ``opsgate`` (the packaged
    ``prices.toml``) or ``genai-prices``; ``version`` the digest of the operator's prices, the
    packaged table's ``version`` or the ``genai-prices`` package version. Both go into the
    ``result`` ledger entry so a call can be re-priced and explained later."""

    price: ModelPrice
    source: str
    version: str


class PriceBook:
    """Every price the gateway charges, by ``(provider, model)`` and request time.

    Lookup order: the operator's ``[prices."provider/model"]`` (``overrides``), then the packaged
    table (``table``: opsgate's overrides and models ``genai-prices`` lacks), then the maintained
    ``genai-prices`` data for the built-in providers (:data:`GENAI_PRICES_PROVIDERS`), which
    applies prices that change on a date or by time of day (DeepSeek's peak hours, weekdays only:
    :data:`WEEKEND_OFF_PEAK`) at the call's time. Tiered prices (long-context tiers) take the tier
    of the call's input token count.

    A provider may answer a request for one model with another (an alias moved, a retired model
    rerouted: the *served* model), and the call is charged at the served model's price. So what a
    reservation holds for a target (:meth:`price_for`) covers every model the target may serve:
    the requested model, the models configured for it (``may_serve``: ``"provider/model"`` ->
    model ids of that provider, ``[may_serve]`` in ``opsgate.toml``) and every model it has been
    seen to serve (:meth:`observe_served`; the gateway reads them from the operation log at
    start-up, :func:`opsgate.metering.served.learn_served_models`).
    """

    def __init__(
        self,
        table: PriceTable,
        overrides: Mapping[str, Mapping[str, Decimal]] | None = None,
        *,
        overrides_version: str = "none",
        now: Callable[[], datetime] | None = None,
        horizon_s: float = 900.0,
        may_serve: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.table = table
        self._may_serve: dict[tuple[str, str], frozenset[str]] = {
            (key.partition("/")[0], key.partition("/")[2]): frozenset(models)
            for key, models in (may_serve or {}).items()
        }
        self._observed: dict[tuple[str, str], frozenset[str]] = {}
        self._overflow: dict[tuple[str, str], Fraction] = {}
        self._now = now or (lambda: datetime.now(UTC))
        self._horizon_s = horizon_s
        self._overrides = {
            key: ModelPrice(model=key.partition("/")[2], provider=key.partition("/")[0], **fields)
            for key, fields in (overrides or {}).items()
        }
        self._overrides_version = overrides_version
        self._dearest_hour: datetime | None = None
        self._dearest: dict[tuple[str, str, datetime, datetime], ModelPrice] = {}
        self._held: tuple[_Window, dict[str, tuple[ModelPrice, frozenset[str] | None]]] | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, now: Callable[[], datetime] | None = None, table: PriceTable | None = None
    ) -> PriceBook:
        """The book of ``settings.prices`` (digested as the overrides' version) over ``table``
        (default: the packaged ``prices.toml``); ``now`` is the clock's ``now`` and
        ``settings.budget_reservation_ttl_s`` the horizon of :meth:`price_for`."""
        overrides = {key: p.model_dump() for key, p in settings.prices.items()}
        digest = hashlib.sha256(
            orjson.dumps({k: {f: str(v) for f, v in p.items()} for k, p in overrides.items()},
                         option=orjson.OPT_SORT_KEYS)
        ).hexdigest()[:16]
        return cls(table or PriceTable.load(), overrides, overrides_version=f"sha256:{digest}",
                   now=now, horizon_s=settings.budget_reservation_ttl_s, may_serve=settings.may_serve)

    def price_for(self, key: str) -> ModelPrice:
        """What a budget reservation must hold per token for a request to ``"provider/model"``
        (see :func:`opsgate.metering.worstcase`): per field, the highest price from now over the
        reservation horizon of the model and of every model the target may serve
        (:meth:`may_serve`), reported under the requested model's name. A served model's price
        is never below what that model's call is charged, so a call the target answers with any
        of those models costs at most its reservation. Raises :class:`UnknownModelPrice` for an
        unpriced requested or configured (``may_serve``) model; a model only observed that has
        no price (any more) is left out (its calls are charged as ``served_model_unpriced``).

        The answer depends only on the whole minutes :meth:`dearest` widens the window to and
        on the models observed for the target, so it is remembered per key while both stay the
        same (:func:`_in_window`; ~1 us instead of ~5 us per call, issue 21)."""
        provider, _, model = key.partition("/")
        start = self._now()
        observed = self._observed.get((provider, model))
        held = self._held  # one read: the window and its prices always belong together
        if held is not None and _in_window(held[0], start):
            known = held[1].get(key)
            if known is not None and known[1] is observed:
                return known[0]
        else:
            first, last = _whole_minutes(start, self._horizon_s)
            horizon = timedelta(seconds=self._horizon_s)
            held = ((first, first + _MINUTE, last - _MINUTE - horizon, last - horizon, start.tzinfo), {})
            self._held = held
        price = self._price_for(provider, model, start)
        held[1][key] = (price, observed)
        return price

    def _price_for(self, provider: str, model: str, start: datetime) -> ModelPrice:
        """:meth:`price_for` of ``provider/model`` for a reservation starting at ``start``."""
        price = self.dearest(provider, model, start, self._horizon_s)
        others = []
        for served in sorted(self._may_serve.get((provider, model), ())):
            others.append(self.dearest(provider, served, start, self._horizon_s))
        for served in sorted(self._observed.get((provider, model), ())):
            try:
                others.append(self.dearest(provider, served, start, self._horizon_s))
            except UnknownModelPrice:
                continue
        if not others:
            return price
        return replace(price, **{f: max(getattr(p, f) for p in (price, *others)) for f in PRICE_FIELDS})

    def may_serve(self, provider: str, model: str) -> frozenset[str]:
        """The models other than ``model`` that ``provider`` may answer a request for ``model``
        with: the configured ones and the ones observed (:meth:`observe_served`)."""
        return self._may_serve.get((provider, model), frozenset()) | self._observed.get((provider, model), frozenset())

    def observe_served(self, provider: str, model: str, served_model: str | None) -> bool:
        """Learn that ``provider`` answered a request for ``model`` with ``served_model`` (the
        model the provider reported; ``None`` or a dated snapshot of ``model`` is the model
        itself). From now on :meth:`price_for` of ``provider/model`` covers it, when it has a
        price. Returns whether it was new. In memory, per ``(provider, model)``; event-loop
        confined like the gateway (no lock)."""
        if served_model is None or normalise_model(served_model) == normalise_model(model):
            return False
        if self.lookup(provider, served_model, self._now()) is None:
            return False
        seen = self._observed.get((provider, model), frozenset())
        if served_model in seen:
            return False
        self._observed[(provider, model)] = seen | {served_model}  # a new set: readers never see one change
        return True

    def observe_output(self, provider: str, model: str, max_tokens: int, output_tokens: int) -> bool:
        """Learn that ``provider`` billed ``output_tokens`` of output for a request to ``model``
        capped at ``max_tokens``: more than the cap is an answer the cap did not bound (Gemini's
        thoughts, which Google's thinking guide describes as apart from ``maxOutputTokens``; a
        provider that ignores its cap). From now on :meth:`output_bound` of ``provider/model``
        holds the highest such ratio. Returns whether the ratio grew. In memory, per ``(provider,
        model)``, event-loop confined like :meth:`observe_served`."""
        if max_tokens <= 0 or output_tokens <= max_tokens:
            return False
        ratio = Fraction(output_tokens, max_tokens)
        if ratio <= self._overflow.get((provider, model), Fraction(1)):
            return False
        self._overflow = {**self._overflow, (provider, model): ratio}  # readers never see one change
        return True

    def output_bound(self, key: str, max_tokens: int) -> int:
        """The output tokens a request capped at ``max_tokens`` to ``key`` (``"provider/model"``)
        is reserved for: ``max_tokens``, times the highest ratio of billed output to cap the
        target was seen to answer with (:meth:`observe_output`), rounded up."""
        provider, _, model = key.partition("/")
        ratio = self._overflow.get((provider, model))
        return max_tokens if ratio is None else math.ceil(max_tokens * ratio)

    def lookup(
        self, provider: str, model: str, at: datetime, input_tokens: int = 0
    ) -> ResolvedPrice | None:
        """The price of ``model`` served by ``provider`` at ``at`` (tz-aware UTC), or ``None``."""
        override = self._overrides.get(f"{provider}/{model}")
        if override is not None:
            return ResolvedPrice(override, "opsgate.toml", self._overrides_version)
        packaged = self.table.prices.get(model)
        if packaged is not None and packaged.provider == provider:
            return ResolvedPrice(packaged, "opsgate", self.table.version)
        return _genai_price(provider, model, at, input_tokens)

    def price_at(
        self, provider: str, model: str, at: datetime, input_tokens: int = 0
    ) -> ResolvedPrice:
        """Like :meth:`lookup`; raises :class:`UnknownModelPrice` when nothing prices it."""
        resolved = self.lookup(provider, model, at, input_tokens)
        if resolved is None:
            raise UnknownModelPrice(f"no price for model {provider}/{model}")
        return resolved

    def context_window(self, provider: str, model: str) -> int | None:
        """``model``'s context window in tokens from the ``genai-prices`` model facts (built-in
        providers only, :data:`GENAI_PRICES_PROVIDERS`), or ``None`` when they do not say."""
        info = _genai_model(provider, model)
        return info.context_window if info is not None else None

    def change_times(self, models: Iterable[tuple[str, str]], start: datetime) -> list[datetime]:
        """``start`` and every instant within the reservation horizon after it at which a price of
        one of ``models`` (``(provider, model)`` pairs) may change: each whole hour and each
        time-of-day change of the maintained data (:func:`price_changes`), sorted. Between two
        of them no price of those models changes, so the most a usage can cost anywhere in
        ``[start, start + horizon]`` is the most it costs at one of these (what the pipeline holds
        for a call's requests already answered, :meth:`opsgate.pipeline.Gateway.owed`)."""
        end = start + timedelta(seconds=self._horizon_s)
        times = {start}
        hour = start.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        while hour <= end:
            times.add(hour)
            hour += timedelta(hours=1)
        for provider, model in models:
            times.update(price_changes(provider, model, start, end))
        return sorted(times)

    def dearest(self, provider: str, model: str, start: datetime, horizon_s: float) -> ModelPrice:
        """Per field, the highest price ``model`` has between ``start`` and ``start + horizon_s``
        (tz-aware; seconds), for reservations. Raises :class:`UnknownModelPrice`.

        A price changes on a whole hour (a dated change starts at 00:00 UTC) or where a
        time-of-day window of the maintained data opens or closes, which need not be a whole
        hour (genai-prices 0.2.3 has DeepSeek's old 00:30 and 16:30 UTC windows): the price is
        read at the window's first minute, at every whole hour and at every such opening or
        closing inside it. Before, only whole hours were read, so a window ending after 00:30
        but before 01:00 was reserved at the price before 00:30 (:func:`price_changes`).

        The window is widened to whole minutes (a few seconds more, never less), so the answer
        depends only on those two minutes; it is remembered for the hour of the first (the
        request path asks it for every call)."""
        first, last = _whole_minutes(start, horizon_s)
        floor = first.replace(minute=0)
        key = (provider, model, first, last)
        if self._dearest_hour != floor:
            self._dearest_hour, self._dearest = floor, {}
        if key not in self._dearest:
            times = {first, *price_changes(provider, model, first, last)}
            hour = floor + timedelta(hours=1)
            while hour <= last:
                times.add(hour)
                hour += timedelta(hours=1)
            prices = [self.price_at(provider, model, t, 10**9).price for t in sorted(times)]
            self._dearest[key] = replace(prices[0], **{f: max(getattr(p, f) for p in prices)
                                                       for f in PRICE_FIELDS})
        return self._dearest[key]


_MINUTE = timedelta(minutes=1)

_Window = tuple[datetime, datetime, datetime, datetime, Any]
"""``(first, first + 1 min, last - 1 min - horizon, last - horizon, tzinfo)`` of a start whose
:func:`_whole_minutes` are ``(first, last)``."""


def _in_window(window: _Window, start: datetime) -> bool:
    """Whether :func:`_whole_minutes` of ``start`` (same ``tzinfo``) are those of ``window``:
    ``first <= start < first + 1 min`` and ``last - 1 min < start + horizon <= last`` (exact:
    datetime arithmetic is in whole microseconds)."""
    return (start.tzinfo is window[4] and window[0] <= start < window[1]
            and window[2] < start <= window[3])


def _whole_minutes(start: datetime, horizon_s: float) -> tuple[datetime, datetime]:
    """``(first, last)``: ``start`` rounded down and ``start + horizon_s`` (seconds) rounded up
    to a whole minute, the window :meth:`PriceBook.dearest` reads prices in."""
    first = start.replace(second=0, microsecond=0)
    end = start + timedelta(seconds=horizon_s)
    last = end.replace(second=0, microsecond=0)
    return first, (last + _MINUTE if last < end else last)


def price_changes(provider: str, model: str, first: datetime, last: datetime) -> list[datetime]:
    """The instants in ``(first, last]`` (tz-aware) at which a time-of-day window of ``model``'s
    ``genai-prices`` prices opens or closes (``TimeOfDateConstraint`` start and end times, on
    every UTC day the interval touches); empty for a model the maintained data does not price.
    Dated changes (``StartDateConstraint``) start at 00:00 UTC, a whole hour, which
    :meth:`PriceBook.dearest` reads anyway."""
    info = _genai_model(provider, model)
    conditional = info.prices if info is not None and isinstance(info.prices, list) else []
    times = [c.constraint for c in conditional if isinstance(c.constraint, genai_types.TimeOfDateConstraint)]
    found: list[datetime] = []
    day = first.astimezone(UTC).date() - timedelta(days=1)
    while day <= last.astimezone(UTC).date() + timedelta(days=1):
        for window in times:
            for edge in (window.start_time, window.end_time):
                at = datetime.combine(day, edge.replace(tzinfo=None), tzinfo=edge.tzinfo or UTC)
                if first < at <= last:
                    found.append(at.astimezone(UTC))
        day += timedelta(days=1)
    return found


def genai_prices_version() -> str:
    """The installed ``genai-prices`` package version (the maintained data's version)."""
    return genai_prices.__version__


WEEKEND_OFF_PEAK: frozenset[str] = frozenset({"deepseek"})
"""Providers billing off-peak all day on Saturdays and Sundays. DeepSeek's pricing page puts its
peak windows (01:00-04:00 and 06:00-10:00 UTC) on weekdays only, since 2026-08-23; genai-prices
0.2.3 has no day-of-week condition and bills those windows at peak every day (its note calls that
an upper bound). The windows lie within one Beijing calendar day, so the UTC weekday decides."""


_MODEL_MEMO_SIZE = 512
_model_memo: tuple[genai_data_snapshot.DataSnapshot, dict[tuple[str, str], genai_types.ModelInfo | None]] | None = None


def _genai_model(provider: str, model: str) -> genai_types.ModelInfo | None:
    """``model``'s entry in the ``genai-prices`` data, for a built-in ``provider`` only.

    Remembered per ``(provider, model)`` for as long as ``genai-prices`` serves the same data
    snapshot (at most :data:`_MODEL_MEMO_SIZE` entries): the request path asks it several times a
    call, and matching a model walks every clause of the provider's models (py-spy: ~6 % of a
    governed call's event-loop time, issue 21)."""
    global _model_memo
    provider_id = GENAI_PRICES_PROVIDERS.get(provider)
    if provider_id is None:
        return None
    snapshot = genai_data_snapshot.get_snapshot()
    if _model_memo is None or _model_memo[0] is not snapshot or len(_model_memo[1]) >= _MODEL_MEMO_SIZE:
        _model_memo = (snapshot, {})
    found = _model_memo[1]
    if (provider_id, model) not in found:
        source = next((p for p in snapshot.providers if p.id == provider_id), None)
        found[provider_id, model] = source.find_model(model) if source is not None else None
    return found[provider_id, model]


def _genai_price(provider: str, model: str, at: datetime, input_tokens: int) -> ResolvedPrice | None:
    info = _genai_model(provider, model)
    if info is None:
        return None
    if provider in WEEKEND_OFF_PEAK and at.astimezone(UTC).weekday() >= 5:
        at = at.astimezone(UTC).replace(hour=12, minute=0, second=0, microsecond=0)  # off-peak
    raw = info.get_prices(at)
    if raw.input_mtok is None or raw.output_mtok is None:
        return None
    values = {field: _tier(getattr(raw, key), input_tokens) for field, key in _GENAI_FIELDS}
    # genai-prices bills cache tokens of a kind the model has no price for as uncached input
    # (and 1-hour writes as 5-minute writes); opsgate's Usage keeps the kinds apart, so the
    # missing prices are filled in the same way.
    for missing, fallback in (("cache_write", "input"), ("cache_read", "input"),
                              ("cache_write_1h", "cache_write")):
        if getattr(raw, dict(_GENAI_FIELDS)[missing]) is None:
            values[missing] = values[fallback]
    price = ModelPrice(model=model, provider=provider, **values)
    return ResolvedPrice(price, "genai-prices", genai_prices_version())


def _tier(value: Any, input_tokens: int) -> Decimal:
    """A genai-prices price as one Decimal: ``None`` is 0 (filled in by the caller), a tiered price takes the highest tier
    whose start the call's input tokens exceed (the providers' "cliff" tiers)."""
    if value is None:
        return Decimal(0)
    if isinstance(value, genai_types.TieredPrices):
        applicable = value.base
        for tier in value.tiers:
            if input_tokens > tier.start:
                applicable = tier.price
        return Decimal(applicable)
    return Decimal(value)
