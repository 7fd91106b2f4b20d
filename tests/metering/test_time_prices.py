"""Prices by the call's time (tests/vectors/cost_vectors_time.json) and the genai-prices
cross-check of every model on the default routes (issue 13)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import genai_prices
import pytest

from opsgate.config import Settings
from opsgate.metering.cost import cost_micro_usd, worst_case_micro_usd
from opsgate.metering.prices import GENAI_PRICES_PROVIDERS, PriceBook, PriceTable
from opsgate.providers.base import Usage
from opsgate.routing.policy import policies_for

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "cost_vectors_time.json").read_text("utf-8"))
BOOK = PriceBook(PriceTable.load())

OVERRIDES: dict[str, str] = {}
"""Default-route targets whose opsgate price differs from genai-prices' at the checked times,
with the reason. Empty: on weekdays every default model is priced exactly as genai-prices."""

WEEKDAY_TIMES = ["2026-12-03T02:30:00Z", "2026-12-03T07:00:00Z", "2026-12-03T12:00:00Z",
                 "2027-01-04T08:00:00Z", "2027-01-04T20:00:00Z"]


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_vectors_pin_the_installed_genai_prices() -> None:
    assert genai_prices.__version__ == VECTORS["genai_prices_version"]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_time_of_day_cost_vector(vector: dict) -> None:
    provider, model = vector["target"].split("/")
    resolved = BOOK.price_at(provider, model, _at(vector["at"]))
    assert (resolved.source, resolved.version) == ("genai-prices", VECTORS["genai_prices_version"])
    assert {k: getattr(resolved.price, k) for k in vector["price"]} == {
        k: Decimal(v) for k, v in vector["price"].items()
    }
    assert cost_micro_usd(Usage(**vector["usage"]), resolved.price) == vector["expected_micro_usd"]


def _default_targets() -> list[tuple[str, str]]:
    return sorted({(t.provider, t.model) for p in policies_for(Settings()).values() for t in p.chain})


@pytest.mark.parametrize(("provider", "model"), _default_targets(), ids=lambda v: str(v))
@pytest.mark.parametrize("when", WEEKDAY_TIMES)
def test_default_route_prices_equal_genai_prices_per_token(provider: str, model: str, when: str) -> None:
    """opsgate's per-token price of each token kind equals what genai-prices' own calc_price
    charges for a million tokens of that kind (its input_tokens include cache reads and writes)."""
    if f"{provider}/{model}" in OVERRIDES:
        pytest.fail(f"{provider}/{model} is overridden: {OVERRIDES[provider + '/' + model]}")
    at = _at(when)
    ours = BOOK.price_at(provider, model, at).price
    mtok = 1_000_000

    def genai(**usage: int) -> Decimal:
        return genai_prices.calc_price(genai_prices.Usage(**usage), model, provider_id=GENAI_PRICES_PROVIDERS[provider],
                                       genai_request_timestamp=at).total_price

    assert ours.input == genai(input_tokens=mtok)
    assert ours.output == genai(output_tokens=mtok)
    assert ours.cache_read == genai(input_tokens=mtok, cache_read_tokens=mtok)
    assert ours.cache_write == genai(input_tokens=mtok, cache_write_tokens=mtok)


def test_weekend_is_the_one_named_difference_from_genai_prices() -> None:
    """genai-prices 0.2.3 bills DeepSeek's peak windows on Saturdays too (its note calls that an
    upper bound); DeepSeek bills weekends off-peak, which opsgate applies."""
    saturday = _at("2026-12-05T02:30:00Z")
    ours = BOOK.price_at("deepseek", "deepseek-flash", saturday).price
    theirs = genai_prices.calc_price(genai_prices.Usage(output_tokens=1_000_000), "deepseek-flash",
                                     provider_id="deepseek", genai_request_timestamp=saturday).total_price
    assert (ours.output, theirs) == (Decimal("0.6"), Decimal("1.2"))


def test_self_hosted_models_are_never_priced_by_default() -> None:
    at = _at("2026-12-03T12:00:00Z")
    assert BOOK.lookup("local-vllm", "qwen3-8b", at) is None
    assert BOOK.lookup("local-vllm", "claude-opus-5", at) is None  # a known name on another provider
    priced = PriceBook.from_settings(Settings(prices={"local-vllm/qwen3-8b": {"input": "0", "output": "0"}}))
    resolved = priced.price_at("local-vllm", "qwen3-8b", at)
    assert (resolved.price.input, resolved.price.output, resolved.source) == (0, 0, "opsgate.toml")


def test_operator_prices_override_the_maintained_data() -> None:
    book = PriceBook.from_settings(Settings(prices={"gemini/gemini-3.8-flash": {"input": "0.5", "output": "3"}}))
    resolved = book.price_at("gemini", "gemini-3.8-flash", _at("2026-12-03T12:00:00Z"))
    assert (resolved.price.input, resolved.price.output, resolved.price.cache_read) == (
        Decimal("0.5"), Decimal("3"), Decimal(0))
    assert resolved.source == "opsgate.toml" and resolved.version.startswith("sha256:")


def test_reservations_hold_the_dearest_price_over_the_horizon() -> None:
    # 00:50 UTC on a weekday is off-peak; the peak starts at 01:00, inside a 15-minute horizon
    dearest = BOOK.dearest("deepseek", "deepseek-flash", _at("2026-12-03T00:50:00Z"), 900)
    assert (dearest.input, dearest.output) == (Decimal("0.3"), Decimal("1.2"))
    calm = BOOK.dearest("deepseek", "deepseek-flash", _at("2026-12-03T00:10:00Z"), 900)
    assert (calm.input, calm.output) == (Decimal("0.15"), Decimal("0.6"))


def _book_without_packaged_deepseek() -> PriceBook:
    """A book whose packaged table lacks the DeepSeek models, so ``deepseek-chat`` is priced by
    genai-prices 0.2.3: $0.135/$0.55 off-peak (16:30-00:30 UTC), $0.27/$1.10 from 00:30 UTC."""
    table = PriceTable.from_mapping({
        "version": "test",
        "providers": {"anthropic": {"source": "https://example.test/pricing", "read_on": date(2026, 11, 30)}},
        "models": {"claude-opus-4-5": {"provider": "anthropic", "input": "5", "output": "25", "cache_write": "6.25",
                                       "cache_write_1h": "10", "cache_read": "0.5"}},
    })
    return PriceBook(table)


def test_a_price_change_on_the_half_hour_inside_the_horizon_is_reserved() -> None:
    """The maintained data changes deepseek-chat's price at 00:30 UTC. A reservation taken at
    00:20 with a 15-minute horizon must hold the 00:30 price, which a call metered at 00:31 pays;
    sampling whole hours only (the old code) reserved the 00:20 price, half of it."""
    book = _book_without_packaged_deepseek()
    start, metered = _at("2026-12-03T00:20:00Z"), _at("2026-12-03T00:31:00Z")
    charged = book.price_at("deepseek", "deepseek-chat", metered).price
    assert (charged.input, charged.output) == (Decimal("0.27"), Decimal("1.1"))
    held = book.dearest("deepseek", "deepseek-chat", start, 900)
    assert (held.input, held.output, held.cache_read) == (Decimal("0.27"), Decimal("1.1"), Decimal("0.07"))
    usage = Usage(input_tokens=4_000, output_tokens=1_000)
    assert cost_micro_usd(usage, charged) <= worst_case_micro_usd(4_000, 1_000, held, cache_writes=False)
    # a window that closes before the change keeps the cheaper price (no needless hold)
    calm = book.dearest("deepseek", "deepseek-chat", _at("2026-12-03T00:05:00Z"), 900)
    assert (calm.input, calm.output) == (Decimal("0.135"), Decimal("0.55"))
    # the evening change (16:30, to off-peak) is read too: the dearer side is the one before it
    evening = book.dearest("deepseek", "deepseek-chat", _at("2026-12-03T16:20:00Z"), 900)
    assert (evening.input, evening.output) == (Decimal("0.27"), Decimal("1.1"))



def test_a_remembered_reservation_price_is_read_again_when_the_window_reaches_a_change() -> None:
    """:meth:`PriceBook.price_for` remembers its answer while the window's whole minutes stay
    the same (issue 21). One microsecond after 00:14:00 the 15-minute window ends after 00:29
    and reaches the 00:30 change, in the same first minute: the price remembered at 00:14:00
    (off-peak) must not be held for it, nor the peak price after the clock steps back."""
    now = [_at("2026-12-03T00:14:00Z")]
    book = PriceBook(_book_without_packaged_deepseek().table, now=lambda: now[0], horizon_s=900)
    held = [book.price_for("deepseek/deepseek-chat")]
    for at in ("2026-12-03T00:14:00.000001Z", "2026-12-03T00:13:59.999999Z", "2026-12-03T00:14:59.999999Z",
               "2026-12-03T16:30:00Z", "2026-12-03T16:29:30Z"):  # 16:30 ends the peak; the clock steps back
        now[0] = _at(at)
        held.append(book.price_for("deepseek/deepseek-chat"))
    peak, off_peak = (Decimal("0.27"), Decimal("1.1")), (Decimal("0.135"), Decimal("0.55"))
    assert [(p.input, p.output) for p in held] == [off_peak, peak, off_peak, peak, off_peak, peak]
