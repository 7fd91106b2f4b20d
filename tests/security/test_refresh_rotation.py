"""Refresh tokens: opaque, stored hashed, rotated on every use; reuse revokes the family except
inside the grace window for concurrent refreshes."""

from __future__ import annotations

import hashlib
import threading

import pytest
from sqlalchemy import select

from opsgate.clock import ManualClock
from opsgate.security.errors import Unauthorized
from opsgate.security.models import refresh_tokens
from opsgate.security.refresh import RefreshTokens
from tests.stores import migrated_engine


@pytest.fixture
def engine(tmp_path):
    engine = migrated_engine(tmp_path)
    yield engine
    engine.dispose()


@pytest.fixture
def clock():
    return ManualClock()


def _service(engine, clock, grace_s=10.0, ttl_s=86400):
    return RefreshTokens(engine, clock, ttl_s=ttl_s, grace_s=grace_s, successor_key=b"k" * 32)


def test_only_the_hash_is_stored_and_each_use_rotates(engine, clock):
    svc = _service(engine, clock)
    first = svc.issue("alice")
    assert first.token.startswith("ogr_") and len(first.token) == 4 + 43
    with engine.connect() as conn:
        (stored,) = conn.execute(select(refresh_tokens.c.token_hash)).one()
    assert stored == hashlib.sha256(first.token.encode()).digest()
    second = svc.rotate(first.token)
    assert second.token != first.token and second.family_id == first.family_id and second.user_id == "alice"
    third = svc.rotate(second.token)
    assert third.family_id == first.family_id


def test_reuse_after_the_grace_window_revokes_the_whole_family(engine, clock):
    svc = _service(engine, clock)
    first = svc.issue("alice")
    second = svc.rotate(first.token)
    other_login = svc.issue("alice")
    clock.advance(10.001)
    with pytest.raises(Unauthorized, match="already used"):
        svc.rotate(first.token)
    with pytest.raises(Unauthorized, match="not valid"):
        svc.rotate(second.token)  # the legitimate holder is logged out too
    assert svc.rotate(other_login.token).user_id == "alice"  # another family is untouched


def _live_tokens(engine, family_id):
    with engine.connect() as conn:
        return conn.execute(select(refresh_tokens.c.token_hash).where(
            refresh_tokens.c.family_id == family_id, refresh_tokens.c.rotated_at.is_(None),
            refresh_tokens.c.revoked_at.is_(None))).all()


def test_replays_inside_the_grace_window_get_the_same_successor_and_mint_nothing(engine, clock):
    svc = _service(engine, clock)
    first = svc.issue("alice")
    second = svc.rotate(first.token)
    clock.advance(9.9)
    replays = [svc.rotate(first.token) for _ in range(5)]
    assert {r.token for r in replays} == {second.token}  # a lost response is answered again
    assert {r.expires_at for r in replays} == {second.expires_at}
    assert len(_live_tokens(engine, first.family_id)) == 1
    third = svc.rotate(second.token)
    assert third.family_id == first.family_id and len(_live_tokens(engine, first.family_id)) == 1


def test_a_replay_after_the_successor_was_used_is_reuse_even_inside_the_grace_window(engine, clock):
    svc = _service(engine, clock)
    first = svc.issue("alice")
    third = svc.rotate(svc.rotate(first.token).token)
    clock.advance(1)
    with pytest.raises(Unauthorized, match="already used"):
        svc.rotate(first.token)
    with pytest.raises(Unauthorized, match="not valid"):
        svc.rotate(third.token)  # the family is revoked


def test_every_process_derives_the_same_successor(engine, clock):
    first = _service(engine, clock).issue("alice")
    second = _service(engine, clock).rotate(first.token)
    assert _service(engine, clock).rotate(first.token).token == second.token
    other_key = RefreshTokens(engine, clock, ttl_s=86400, grace_s=10.0, successor_key=b"x" * 32)
    with pytest.raises(Unauthorized, match="already used"):
        other_key.rotate(first.token)  # a successor only the key's holder computes


def test_expired_unknown_and_logged_out_tokens_fail(engine, clock):
    svc = _service(engine, clock, ttl_s=60)
    token = svc.issue("alice").token
    clock.advance(60)
    with pytest.raises(Unauthorized):
        svc.rotate(token)
    with pytest.raises(Unauthorized):
        svc.rotate("ogr_" + "A" * 43)
    live = svc.issue("bob").token
    assert svc.revoke(live) is True and svc.revoke("ogr_unknown") is False
    with pytest.raises(Unauthorized):
        svc.rotate(live)


def test_an_expired_token_is_not_marked_rotated(engine, clock):
    svc = _service(engine, clock, ttl_s=60)
    token = svc.issue("alice").token
    clock.advance(61)
    with pytest.raises(Unauthorized):
        svc.rotate(token)
    with engine.connect() as conn:
        assert conn.execute(select(refresh_tokens.c.rotated_at)).scalar() is None


def _race(svc, token, n):
    results, barrier = [], threading.Barrier(n)

    def worker():
        barrier.wait()
        try:
            results.append(svc.rotate(token))
        except Unauthorized as exc:
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_refreshes_inside_the_grace_window_all_succeed(engine, clock):
    svc = _service(engine, clock)
    token = svc.issue("alice").token
    results = _race(svc, token, 8)
    assert all(not isinstance(r, Exception) for r in results)
    assert len({r.token for r in results}) == 1 and len({r.family_id for r in results}) == 1  # one successor
    with engine.connect() as conn:
        rotated = conn.execute(select(refresh_tokens.c.rotated_at).where(refresh_tokens.c.rotated_at.is_not(None))).all()
    assert len(rotated) == 1  # one row marked rotated: exactly one rotation won


def test_without_a_grace_window_a_concurrent_reuse_revokes_the_family(engine, clock):
    svc = _service(engine, clock, grace_s=0.0)
    token = svc.issue("alice").token
    results = _race(svc, token, 4)
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) == 1 and sum(isinstance(r, Unauthorized) for r in results) == 3
    with pytest.raises(Unauthorized, match="not valid"):
        svc.rotate(winners[0].token)
