"""SecretStore against a loopback 1Password Connect stand-in (real HTTP, the Connect REST shapes):
ledger entry before every read, encrypted cache with TTL and refresh, rotation, clear errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.security.op_connect import VALUE

from opsgate.clock import SystemClock
from opsgate.ledger.writer import Ledger
from opsgate.security.errors import SecretNotFound, SecretUnavailable
from opsgate.security.secrets import EncryptedCache, SecretStore
from opsgate.security.secrets_connect import ConnectClient, OpReference
from opsgate.store.db import make_engine, upgrade
from opsgate.store.models import ledger_entries


@pytest.fixture
def ledger(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'l.db'}"
    upgrade(url)
    engine = make_engine(url)
    led = Ledger(engine, SystemClock())
    led.start()
    yield led, engine
    led.close()


def bodies(engine) -> list[dict]:  # type: ignore[no-untyped-def]
    import json

    with engine.connect() as conn:
        return [json.loads(b) for (b,) in conn.execute(select(ledger_entries.c.body))]


async def test_op_reference_through_connect_is_ledgered_first(connect, ledger) -> None:  # type: ignore[no-untyped-def]
    client, seen, _, _ = connect
    led, engine = ledger
    env = {"ANTHROPIC_API_KEY": "op://Prod/Anthropic/keys/credential"}
    store = SecretStore(led, SystemClock(), env=env, connect=client)
    assert await store.get("ANTHROPIC_API_KEY", actor="router", purpose="provider call") == VALUE
    assert await store.get("ANTHROPIC_API_KEY", actor="router", purpose="provider call") == VALUE
    assert len(seen) == 3  # the second read came from the cache
    entries = [b for b in bodies(engine) if b["kind"] == "secret_access"]
    assert len(entries) == 2
    assert {k: entries[0][k] for k in ("secret", "actor", "purpose")} == {
        "secret": "ANTHROPIC_API_KEY", "actor": "router", "purpose": "provider call"}
    assert VALUE not in str(bodies(engine))
    info = await store.info("ANTHROPIC_API_KEY", actor="cli")
    assert info.source == "op://Prod/Anthropic/keys/credential"
    assert info.age is not None and info.age > timedelta(days=300)


async def test_no_read_when_the_ledger_is_down(connect, ledger) -> None:  # type: ignore[no-untyped-def]
    client, seen, _, _ = connect
    led, _ = ledger
    led.close()
    store = SecretStore(led, SystemClock(), env={"K": "op://Prod/Anthropic/credential"}, connect=client)
    with pytest.raises(Exception, match="closed"):
        await store.get("K", actor="a", purpose="p")
    assert seen == []


async def test_errors_name_the_reference_never_the_value(connect, ledger) -> None:  # type: ignore[no-untyped-def]
    client, _, session, port = connect
    led, _ = ledger
    env = {"A": "op://Prod/Missing/credential", "B": "op://Nope/Anthropic/credential", "C": "op://bad"}
    store = SecretStore(led, SystemClock(), env=env, connect=client)
    for name, ref in [("A", "Missing"), ("B", "Nope"), ("C", "op://bad"), ("UNSET_X", "UNSET_X")]:
        with pytest.raises(SecretNotFound, match=ref) as info:
            await store.get(name, actor="a", purpose="p")
        assert VALUE not in str(info.value)
    wrong = ConnectClient(session, f"http://127.0.0.1:{port}", "wrong")
    with pytest.raises(SecretUnavailable, match="401"):
        await wrong.resolve(OpReference.parse("op://Prod/Anthropic/credential"))


async def test_rotation_window_and_refresh(ledger) -> None:  # type: ignore[no-untyped-def]
    led, _ = ledger
    env = {"K": "new", "K_PREVIOUS": "old", "K_ROTATED_AT": "2025-01-01T00:00:00+00:00"}
    store = SecretStore(led, SystemClock(), env=env)
    assert await store.active_keys("K", actor="a", purpose="p") == ["new", "old"]
    env["K"], env["K_PREVIOUS"] = "newer", ""
    assert await store.active_keys("K", actor="a", purpose="p") == ["new"]  # cached
    store.refresh("K")
    assert await store.active_keys("K", actor="a", purpose="p") == ["newer"]
    info = await store.info("K", actor="a")
    assert info.source == "env:K" and info.age > datetime.now(UTC) - datetime(2025, 1, 2, tzinfo=UTC)


def test_cache_is_encrypted_and_expires() -> None:
    cache = EncryptedCache(ttl_s=0.05)
    cache.put("K", VALUE)
    sealed = cache.ciphertext("K")
    assert sealed is not None and VALUE.encode() not in sealed and len(sealed) == len(VALUE) + 16
    cache.put("K", VALUE)
    assert cache.ciphertext("K") != sealed  # a fresh nonce each time
    assert cache.get("K") == VALUE
    import time

    time.sleep(0.06)
    assert cache.get("K") is None
