"""Bucketing: Unleash's published vectors, the 5 % / 25 % shares over 100,000 users, monotonicity."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import pytest

from opsgate.rollout.bucketing import bucket, in_rollout

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "bucketing.json").read_text())


@pytest.mark.parametrize("case", VECTORS["normalized_values"]["cases"], ids=lambda c: c["user_id"])
def test_rollout_bucket_matches_unleash_normalized_value(case: dict) -> None:
    assert bucket(case["group_id"], case["user_id"]) == case["bucket"]


@pytest.mark.parametrize("case", VECTORS["rollouts"]["cases"], ids=lambda c: c["spec"])
def test_rollout_client_specification_cases(case: dict) -> None:
    assert in_rollout(bucket(case["group_id"], case["user_id"]), case["percentage"]) is case["enabled"]


@pytest.fixture(scope="module")
def buckets() -> list[int]:
    rng = random.Random(20260101)
    return [bucket("email-compose", str(uuid.UUID(int=rng.getrandbits(128)))) for _ in range(100_000)]


def test_rollout_buckets_are_1_to_100(buckets: list[int]) -> None:
    assert min(buckets) == 1
    assert max(buckets) == 100


@pytest.mark.parametrize("percentage", [5, 25])
def test_rollout_share_within_half_a_point(buckets: list[int], percentage: int) -> None:
    share = 100 * sum(in_rollout(b, percentage) for b in buckets) / len(buckets)
    assert abs(share - percentage) <= 0.5, share


def test_rollout_5_percent_is_a_subset_of_25_percent(buckets: list[int]) -> None:
    at5 = {i for i, b in enumerate(buckets) if in_rollout(b, 5)}
    at25 = {i for i, b in enumerate(buckets) if in_rollout(b, 25)}
    assert at5 and at5 < at25
    assert all(in_rollout(b, 100) for b in buckets)
    assert not any(in_rollout(b, 0) for b in buckets)


def test_rollout_signed_hashtext_mistake_is_avoided(buckets: list[int]) -> None:
    # The seed's `hashtext(id) % 100 < 5` lets every negative remainder through (~52 %).
    import mmh3

    signed = [mmh3.hash(f"email-compose:{i}", 0, signed=True) for i in range(10_000)]
    naive_share = sum(1 for h in signed if int(h % 100 if h >= 0 else -((-h) % 100)) < 5) / len(signed)
    assert naive_share > 0.5
    assert sum(in_rollout(b, 5) for b in buckets[:10_000]) / 10_000 < 0.06
