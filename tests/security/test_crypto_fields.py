"""Field encryption: AES-256-GCM with the key id in every ciphertext, blind index, rotation,
re-encryption and retirement only when no row uses a key."""

from __future__ import annotations

import base64
import secrets

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr
from sqlalchemy import select
from tests.security.credentials import cipher_for
from tests.stores import migrated_engine

from opsgate.clock import ManualClock
from opsgate.security.crypto import key_id_of
from opsgate.security.errors import DecryptionFailed, KeyRingError
from opsgate.security.keyring import KeyRing, master_key
from opsgate.security.models import encryption_keys, users
from opsgate.security.reencrypt import RETIRE_AFTER_S, keys_in_use, reencrypt, retire_unused
from opsgate.security.users import add_user, find_by_email, get_email, set_email
from opsgate.testing import gateway_settings


@pytest.fixture
def env(tmp_path):
    clock = ManualClock()
    settings = gateway_settings(tmp_path)
    engine = migrated_engine(tmp_path)
    ring, cipher = cipher_for(engine, settings, clock)
    yield engine, settings, clock, ring, cipher
    engine.dispose()


def test_ciphertext_layout_names_the_key_and_decrypts_with_a_bare_aesgcm(env):
    engine, settings, clock, ring, cipher = env
    blob = cipher.encrypt("ada@example.org", "users.email:ada")
    assert blob[0] == 1 and key_id_of(blob) == 1 and len(blob) == 5 + 12 + len("ada@example.org") + 16
    with engine.connect() as conn:
        wrapped = conn.execute(select(encryption_keys.c.wrapped).where(encryption_keys.c.key_id == 1)).scalar()
    data_key = AESGCM(master_key(settings)).decrypt(wrapped[:12], wrapped[12:], b"opsgate-key:data:1")
    plain = AESGCM(data_key).decrypt(blob[5:17], blob[17:], blob[:5] + b"users.email:ada")
    assert plain == b"ada@example.org"
    assert cipher.decrypt(blob, "users.email:ada") == "ada@example.org"


def test_nonces_are_fresh_so_equal_plaintexts_differ(env):
    *_, cipher = env
    assert cipher.encrypt("x@y.org", "c") != cipher.encrypt("x@y.org", "c")


@pytest.mark.parametrize("mutate", ["context", "flip", "truncate", "format", "key"])
def test_tampering_and_moved_ciphertexts_fail(env, mutate):
    *_, cipher = env
    blob = bytearray(cipher.encrypt("ada@example.org", "users.email:ada"))
    context = "users.email:ada"
    if mutate == "context":
        context = "users.email:bob"
    elif mutate == "flip":
        blob[-1] ^= 1
    elif mutate == "truncate":
        blob = blob[:20]
    elif mutate == "format":
        blob[0] = 2
    else:
        blob[4] = 9
    with pytest.raises(DecryptionFailed):
        cipher.decrypt(bytes(blob), context)


def test_another_master_key_cannot_unwrap_the_ring(env, tmp_path):
    engine, settings, clock, ring, cipher = env
    cipher.encrypt("a@b.org", "c")
    other = settings.model_copy(update={"master_key": SecretStr(base64.b64encode(secrets.token_bytes(32)).decode())})
    with pytest.raises(KeyRingError, match="master key"):
        KeyRing(engine, master_key(other), clock).reload()


def test_email_is_stored_encrypted_and_found_by_blind_index(env):
    engine, settings, clock, ring, cipher = env
    add_user(engine, clock, "ada")
    set_email(engine, cipher, "ada", "Ada.Lovelace@Example.org")
    with engine.connect() as conn:
        row = conn.execute(select(users).where(users.c.user_id == "ada")).one()
    assert b"Lovelace" not in row.email_ciphertext and b"lovelace" not in row.email_blind_index
    assert len(row.email_blind_index) == 32
    assert get_email(engine, cipher, "ada") == "Ada.Lovelace@Example.org"
    assert find_by_email(engine, cipher, " ada.lovelace@example.ORG ") == "ada"
    assert find_by_email(engine, cipher, "ada.lovelace@example.com") is None
    add_user(engine, clock, "bob")
    with pytest.raises(ValueError, match="another user"):
        set_email(engine, cipher, "bob", "ada.lovelace@example.org")
    with pytest.raises(ValueError, match="not an email"):
        set_email(engine, cipher, "bob", "not an address")


def test_rotate_reencrypt_then_retire_only_unused_keys(env):
    engine, settings, clock, ring, cipher = env
    for i in range(7):
        add_user(engine, clock, f"u{i}")
        set_email(engine, cipher, f"u{i}", f"u{i}@example.org")
    assert ring.rotate() == 2
    assert key_id_of(cipher.encrypt("new@example.org", "c")) == 2
    assert keys_in_use(engine) == {1: 7}
    clock.advance(RETIRE_AFTER_S)
    assert retire_unused(engine, ring) == []  # key 1 still holds seven rows
    seen = []
    moved = reencrypt(engine, cipher, ring, batch_size=3, progress=seen.append)
    assert moved == 7 and keys_in_use(engine) == {2: 7}
    assert [(p.scanned, p.total, p.moved) for p in seen] == [(3, 7, 3), (6, 7, 6), (7, 7, 7)]
    assert retire_unused(engine, ring) == [1]
    status = {v.key_id: v for v in ring.versions()}
    assert status[1].retired_at is not None and status[2].retired_at is None and status[0].purpose == "index"
    with engine.connect() as conn:
        assert conn.execute(select(encryption_keys.c.wrapped).where(encryption_keys.c.key_id == 1)).scalar() == b""
    assert [get_email(engine, cipher, f"u{i}") for i in range(7)] == [f"u{i}@example.org" for i in range(7)]
    assert find_by_email(engine, cipher, "U3@example.org") == "u3"


def test_a_fresh_current_key_delays_retirement_for_other_replicas(env):
    engine, settings, clock, ring, cipher = env
    ring.rotate()
    assert retire_unused(engine, ring) == []
    clock.advance(RETIRE_AFTER_S)
    assert retire_unused(engine, ring) == [1]


def test_the_current_key_cannot_be_retired(env):
    *_, ring, cipher = env
    cipher.encrypt("a@b.org", "c")
    with pytest.raises(KeyRingError, match="current"):
        ring.retire(1)


def test_another_replica_sees_a_rotation_within_the_reload_interval(env):
    engine, settings, clock, ring, cipher = env
    other_ring, other_cipher = cipher_for(engine, settings, clock)
    assert key_id_of(other_cipher.encrypt("a@b.org", "c")) == 1
    ring.rotate()
    blob = cipher.encrypt("a@b.org", "c")
    assert other_cipher.decrypt(blob, "c") == "a@b.org"  # unknown key id: reloads
    clock.advance(60)
    assert key_id_of(other_cipher.encrypt("a@b.org", "c")) == 2
