"""Cost maths pinned by tests/vectors/cost_vectors.json, plus its algebraic properties."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opsgate.metering.cost import cost_micro_usd, exact_cost_micro_usd, worst_case_micro_usd
from opsgate.metering.prices import ModelPrice, PriceTable
from opsgate.providers.base import Usage

VECTORS = json.loads(
    (Path(__file__).parents[1] / "vectors" / "cost_vectors.json").read_text("utf-8")
)
BILLED = (
    "input_tokens",
    "output_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "cache_read_tokens",
)


def vector_price(model: str) -> ModelPrice:
    fields = {name: Decimal(value) for name, value in VECTORS["prices"][model].items()}
    return ModelPrice(model=model, provider="vector", **fields)


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_cost_vector(vector: dict) -> None:
    usage = Usage(**vector["usage"])
    assert cost_micro_usd(usage, vector_price(vector["model"])) == vector["expected_micro_usd"]


def test_vectors_use_the_packaged_price_table() -> None:
    table = PriceTable.load()
    assert table.version == VECTORS["price_table_version"]
    for model, prices in VECTORS["prices"].items():
        packaged = table.price_for(model)
        assert {name: getattr(packaged, name) for name in prices} == {
            name: Decimal(value) for name, value in prices.items()
        }


def test_every_provider_has_a_vector() -> None:
    table = PriceTable.load()
    covered = {table.price_for(v["model"]).provider for v in VECTORS["vectors"]}
    assert covered == {"anthropic", "deepseek", "gemini"}


def test_reasoning_tokens_are_not_billed_twice() -> None:
    price = vector_price("deepseek-reasoner")
    without = cost_micro_usd(Usage(output_tokens=1000), price)
    assert cost_micro_usd(Usage(output_tokens=1000, reasoning_tokens=900), price) == without == 420


def test_negative_tokens_are_refused() -> None:
    with pytest.raises(ValueError, match="cache_read_tokens"):
        cost_micro_usd(Usage(cache_read_tokens=-1), vector_price("deepseek-chat"))


def test_worst_case_uses_dearest_input_price_and_rounds_up() -> None:
    opus = vector_price("claude-opus-4-5")
    # 1000 prompt tokens at the 1-hour write price 10 = 10000; 200 output x 25 = 5000
    assert worst_case_micro_usd(1000, 200, opus) == 15000
    # DeepSeek: 3 x 0.28 = 0.84; 1 x 0.42 = 0.42; 1.26 rounds UP to 2
    assert worst_case_micro_usd(3, 1, vector_price("deepseek-chat")) == 2


def test_a_request_without_cache_writes_is_bounded_at_the_input_price() -> None:
    opus = vector_price("claude-opus-4-5")
    # 1000 prompt tokens at the input price 5 = 5000; 200 output x 25 = 5000
    assert worst_case_micro_usd(1000, 200, opus, cache_writes=False) == 10000
    bound = worst_case_micro_usd(1000, 200, opus, cache_writes=False)
    assert cost_micro_usd(Usage(input_tokens=600, cache_read_tokens=400, output_tokens=200), opus) <= bound


def test_worst_case_refuses_negative_counts() -> None:
    with pytest.raises(ValueError):
        worst_case_micro_usd(-1, 10, vector_price("deepseek-chat"))


counts = st.integers(min_value=0, max_value=10**9)
usages = st.builds(Usage, **{name: counts for name in BILLED})
models = st.sampled_from(sorted(VECTORS["prices"]))


def add(a: Usage, b: Usage) -> Usage:
    return Usage(**{name: getattr(a, name) + getattr(b, name) for name in BILLED})


@given(usages, usages, models)
def test_cost_is_additive_up_to_rounding(a: Usage, b: Usage, model: str) -> None:
    price = vector_price(model)
    together = cost_micro_usd(add(a, b), price)
    assert abs(together - (cost_micro_usd(a, price) + cost_micro_usd(b, price))) <= 1
    assert exact_cost_micro_usd(add(a, b), price) == (
        exact_cost_micro_usd(a, price) + exact_cost_micro_usd(b, price)
    )


@given(usages, st.sampled_from(BILLED), st.integers(min_value=1, max_value=10**6), models)
def test_cost_is_monotone_in_every_field(usage: Usage, field: str, more: int, model: str) -> None:
    price = vector_price(model)
    bigger = Usage(
        **{name: getattr(usage, name) + (more if name == field else 0) for name in BILLED}
    )
    assert cost_micro_usd(bigger, price) >= cost_micro_usd(usage, price)


@given(usages, models)
def test_rounded_cost_is_within_half_a_micro_dollar(usage: Usage, model: str) -> None:
    price = vector_price(model)
    assert abs(Decimal(cost_micro_usd(usage, price)) - exact_cost_micro_usd(usage, price)) <= (
        Decimal("0.5")
    )


@given(st.integers(0, 10**7), st.integers(0, 10**6), models)
def test_worst_case_bounds_every_split_of_the_prompt(
    prompt: int, max_tokens: int, model: str
) -> None:
    price = vector_price(model)
    bound = worst_case_micro_usd(prompt, max_tokens, price)
    for field in (
        "input_tokens",
        "cache_write_tokens",
        "cache_write_1h_tokens",
        "cache_read_tokens",
    ):
        usage = Usage(**{field: prompt, "output_tokens": max_tokens})
        assert cost_micro_usd(usage, price) <= bound
