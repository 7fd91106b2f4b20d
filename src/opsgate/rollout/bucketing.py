"""Gradual-rollout bucketing, identical to Unleash's ``normalizedValue`` (seed 0).

Source: Unleash client specification (``specifications/03-gradual-rollout-user-id-strategy.json``,
``10-flexible-rollout-strategy.json``) and the SDKs' shared unit vectors
(unleash-client-node ``src/strategy/util.ts``: ``murmurhash3(`${groupId}:${id}`, 0) % 100 + 1``).
MurmurHash3 x86_32 of the UTF-8 bytes of ``"{group_id}:{user_id}"``, seed 0, read unsigned, so the
bucket is uniform on 1..100 and never negative (unlike PostgreSQL's signed ``hashtext``). A user is in
a rollout of ``percentage`` when ``bucket <= percentage``; raising the percentage only adds users.
"""

from __future__ import annotations

import mmh3


def bucket(group_id: str, user_id: str) -> int:
    """The user's bucket in ``group_id``: an int in 1..100 (Unleash ``normalizedValue``)."""
    return mmh3.hash(f"{group_id}:{user_id}", 0, False) % 100 + 1  # str is hashed as UTF-8


def in_rollout(bucket_value: int, percentage: int) -> bool:
    """True when a user in ``bucket_value`` (1..100) is inside a ``percentage`` (0..100) rollout."""
    return bucket_value <= percentage
