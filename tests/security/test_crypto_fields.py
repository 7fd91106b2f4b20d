"""Field encryption: AES-256-GCM with the key id in every ciphertext, blind index, rotation,
re-encryption and retirement only when no row uses a key."""

from __future__ import annotations

import base64
import secrets

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr
from sqlalchemy import select, text
from tests.ledgered import entries
from tests.security.credentials import cipher_for
from tests.stores import migrated_engine

from opsgate.clock import ManualClock
from opsgate.ledger.errors import LedgerUnavailable
from opsgate.ledger.verify import verify
from opsgate.ledger.writer import Ledger
from opsgate.security.crypto import key_id_of
from opsgate.security.errors import DecryptionFailed, KeyRingError
from opsgate.security.keyring import KeyRing, master_key
from opsgate.security.models import encryption_keys, users
from opsgate.security.reencrypt import RETIRE_AFTER_S, keys_in_use, reencrypt, retire_unused, values_using_key
from opsgate.security.users import add_user, find_by_email, get_email, set_email
from opsgate.store.models import ledger_entries
from opsgate.testing import gateway_settings


@pytest.fixture
def env(tmp_path):
    clock = ManualClock()
    settings = gateway_settings(tmp_path)
    engine = migrated_engine(tmp_path)
    ring, cipher = cipher_for(engine, settings, clock)
    yield engine, settings, clock, ring, cipher
    engine.dispose()


@pytest.fixture
def ledger(env):
    engine, _, clock, *_ = env
    with Ledger(engine, clock) as ledger:
        yield ledger


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


def test_rotate_reencrypt_then_retire_only_unused_keys(env, ledger):
    engine, settings, clock, ring, cipher = env
    for i in range(7):
        add_user(engine, clock, f"u{i}")
        set_email(engine, cipher, f"u{i}", f"u{i}@example.org")
    assert ring.rotate(ledger, "cli:ops") == 2
    assert key_id_of(cipher.encrypt("new@example.org", "c")) == 2
    assert keys_in_use(engine) == {1: 7}
    clock.advance(RETIRE_AFTER_S)
    assert retire_unused(engine, ring, ledger, "cli:ops") == []  # key 1 still holds seven rows
    seen = []
    done = reencrypt(engine, cipher, ring, ledger, "cli:ops", batch_size=3, progress=seen.append)
    assert done.moved == 7 and done.undecryptable == [] and keys_in_use(engine) == {2: 7}
    assert [(p.scanned, p.total, p.moved) for p in seen] == [(3, 7, 3), (6, 7, 6), (7, 7, 7)]
    assert retire_unused(engine, ring, ledger, "cli:ops") == [1]
    status = {v.key_id: v for v in ring.versions()}
    assert status[1].retired_at is not None and status[2].retired_at is None and status[0].purpose == "index"
    with engine.connect() as conn:
        assert conn.execute(select(encryption_keys.c.wrapped).where(encryption_keys.c.key_id == 1)).scalar() == b""
    assert [get_email(engine, cipher, f"u{i}") for i in range(7)] == [f"u{i}@example.org" for i in range(7)]
    assert find_by_email(engine, cipher, "U3@example.org") == "u3"
    assert reencrypt(engine, cipher, ring, ledger, "cli:ops").moved == 0  # nothing left to move: no entry


def test_undecryptable_values_are_named_the_rest_move_and_their_key_stays(env, ledger):
    """tester-priv F10: one corrupted ciphertext stopped `keys reencrypt` without naming its row,
    so no old key could ever be retired."""
    engine, settings, clock, ring, cipher = env
    for i in range(6):
        add_user(engine, clock, f"u{i}")
        set_email(engine, cipher, f"u{i}", f"u{i}@example.org")
    with engine.begin() as conn:
        blobs = dict(conn.execute(select(users.c.user_id, users.c.email_ciphertext)).all())
        bad = {"u1": blobs["u1"][:-1] + bytes([blobs["u1"][-1] ^ 1]),  # flipped tag byte, still under key 1
               "u3": blobs["u3"][:3],  # truncated inside its header
               "u4": blobs["u4"][:1] + (9).to_bytes(4, "big") + blobs["u4"][5:]}  # names a key the ring lacks
        for user_id, blob in bad.items():
            conn.execute(users.update().where(users.c.user_id == user_id).values(email_ciphertext=blob))
    ring.rotate(ledger, "cli:ops")
    clock.advance(RETIRE_AFTER_S)
    seen = []
    done = reencrypt(engine, cipher, ring, ledger, "cli:ops", batch_size=2, progress=seen.append)
    assert done.moved == 3
    assert [str(u) for u in done.undecryptable] == [
        "users.email_ciphertext row user_id=u1: a stored ciphertext failed authentication",
        "users.email_ciphertext row user_id=u3: a stored ciphertext is truncated",
        "users.email_ciphertext row user_id=u4: a stored ciphertext names a key the ring does not hold",
    ]
    assert [(p.scanned, p.total, p.moved) for p in seen] == [(2, 6, 1), (4, 6, 2), (6, 6, 3)]
    assert [get_email(engine, cipher, u) for u in ("u0", "u2", "u5")] == ["u0@example.org", "u2@example.org",
                                                                          "u5@example.org"]
    assert keys_in_use(engine) == {1: 1, 2: 3, 9: 1}  # u3's header is unreadable: it names no key
    assert retire_unused(engine, ring, ledger, "cli:ops") == []  # u1 still needs key 1
    assert [e["moved"] for e in entries(engine, "key.reencrypt")] == [1, 1, 1]


def test_rotation_reencryption_and_retirement_are_ledgered_with_key_ids_only(env, ledger):
    engine, settings, clock, ring, cipher = env
    for i in range(5):
        add_user(engine, clock, f"u{i}")
        set_email(engine, cipher, f"u{i}", f"u{i}@example.org")
    ring.rotate(ledger, "cli:ops")
    ring.rotate(ledger, "root")
    clock.advance(RETIRE_AFTER_S)
    reencrypt(engine, cipher, ring, ledger, "cli:ops", batch_size=2)
    assert retire_unused(engine, ring, ledger, "cli:ops") == [1, 2]
    assert entries(engine, "key.rotate") == [{"actor": "cli:ops", "key_id": 2, "before": 1},
                                             {"actor": "root", "key_id": 3, "before": 2}]
    assert entries(engine, "key.reencrypt") == [
        {"actor": "cli:ops", "column": "users.email_ciphertext", "key_id": 3, "from": [1], "moved": n}
        for n in (2, 2, 1)
    ]
    assert entries(engine, "key.retire") == [{"actor": "cli:ops", "key_id": 1}, {"actor": "cli:ops", "key_id": 2}]
    with engine.connect() as conn:
        wrapped = [bytes(w) for (w,) in conn.execute(select(encryption_keys.c.wrapped)) if w]
        bodies = b"".join(bytes(b) for (b,) in conn.execute(select(ledger_entries.c.body)))
    assert len(wrapped) == 2 and not any(w in bodies or base64.b64encode(w) in bodies for w in wrapped)
    assert verify(engine).ok


def test_a_rotation_the_ledger_cannot_take_adds_no_key(env, ledger):
    engine, settings, clock, ring, cipher = env
    ring.reload()
    with engine.begin() as conn:  # the ledger refuses every new entry from here on
        conn.execute(text("CREATE TRIGGER refuse_entries BEFORE INSERT ON ledger_entries "
                          "BEGIN SELECT RAISE(ABORT, 'ledger refused'); END"))
    with pytest.raises(LedgerUnavailable):
        ring.rotate(ledger, "cli:ops")
    assert [v.key_id for v in ring.versions()] == [0, 1]


def test_a_fresh_current_key_delays_retirement_for_other_replicas(env, ledger):
    engine, settings, clock, ring, cipher = env
    ring.rotate(ledger, "cli:ops")
    assert retire_unused(engine, ring, ledger, "cli:ops") == []
    clock.advance(RETIRE_AFTER_S)
    assert retire_unused(engine, ring, ledger, "cli:ops") == [1]


def test_the_current_key_and_a_used_key_cannot_be_retired(env, ledger):
    engine, settings, clock, ring, cipher = env
    add_user(engine, clock, "ada")
    set_email(engine, cipher, "ada", "ada@example.org")
    with pytest.raises(KeyRingError, match="current"):
        ring.retire(ledger, "cli:ops", 1)
    ring.rotate(ledger, "cli:ops")
    with pytest.raises(KeyRingError, match="still use data key 1"):
        ring.retire(ledger, "cli:ops", 1, values_using=values_using_key)
    assert get_email(engine, cipher, "ada") == "ada@example.org"
    assert entries(engine, "key.retire") == []


def test_another_replica_sees_a_rotation_within_the_reload_interval(env, ledger):
    engine, settings, clock, ring, cipher = env
    other_ring, other_cipher = cipher_for(engine, settings, clock)
    assert key_id_of(other_cipher.encrypt("a@b.org", "c")) == 1
    ring.rotate(ledger, "cli:ops")
    blob = cipher.encrypt("a@b.org", "c")
    assert other_cipher.decrypt(blob, "c") == "a@b.org"  # unknown key id: reloads
    clock.advance(60)
    assert key_id_of(other_cipher.encrypt("a@b.org", "c")) == 2
