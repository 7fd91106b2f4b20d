"""One rule for huge values in both analytics operations (tester A): a finite value past
MAX_ABS_VALUE is refused where the series is read, naming the rule, so no statistic overflows."""

from __future__ import annotations

import math

import pytest

from opsgate.errors import InvalidInput
from opsgate.operations import OPERATIONS
from opsgate.operations.base import prepare_input
from opsgate.operations.series import MAX_ABS_VALUE

HUGE = [1.7e308, -1.7e308, 1.0, 1.7e308, 2.0, 3.0, -1.7e308, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]


def _bodies(values: list[float]) -> list[dict[str, object]]:
    stamps = [f"2024-01-{day:02d}T00:00:00Z" for day in range(1, len(values) + 1)]
    csv = "timestamp,value\n" + "\n".join(f"{t},{v!r}" for t, v in zip(stamps, values))
    return [{"csv": csv}, {"series": [{"timestamp": t, "value": v} for t, v in zip(stamps, values)]}]


@pytest.mark.parametrize("op_id", ["analytics-summary", "analytics-anomaly"])
@pytest.mark.parametrize("form", [0, 1], ids=["csv", "series"])
def test_finite_values_past_the_limit_are_refused_by_rule_in_both_operations(op_id: str, form: int, caplog) -> None:
    op = OPERATIONS[op_id]
    body = _bodies(HUGE)[form]
    with pytest.raises(InvalidInput) as refused:
        prepare_input(op, op.Input.model_validate(body))
    assert refused.value.detail == f"point 1 of the series: a value's magnitude may be at most {MAX_ABS_VALUE:g}"
    assert refused.value.errors == [{"loc": next(iter(body)), "msg": refused.value.detail}]
    assert [r for r in caplog.records if r.exc_info] == []


@pytest.mark.parametrize("op_id", ["analytics-summary", "analytics-anomaly"])
def test_values_at_the_limit_give_finite_figures(op_id: str) -> None:
    op = OPERATIONS[op_id]
    values = [MAX_ABS_VALUE if v > 0 else -MAX_ABS_VALUE for v in HUGE]
    for body in _bodies(values):
        prepared = prepare_input(op, op.Input.model_validate(body))
        assert "inf" not in prepared.request.user.lower()
    figures = OPERATIONS["analytics-summary"].prepare(
        OPERATIONS["analytics-summary"].Input.model_validate(_bodies(values)[0])).context["figures"]
    assert all(math.isfinite(v) for v in (figures.mean, figures.stdev, figures.change, figures.slope_per_day))
