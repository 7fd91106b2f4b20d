"""Password hashing with Argon2id (RFC 9106) through argon2-cffi.

Hashes are PHC strings (``$argon2id$v=19$m=...,t=...,p=...$salt$hash``) with argon2-cffi's
defaults, which follow RFC 9106's second recommended option (64 MiB, t=3, p=4). Verification is
constant time in the hash; a stored hash made with weaker parameters is reported by
:func:`needs_rehash` so a successful login can upgrade it.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_HASHER = PasswordHasher()
MIN_LENGTH = 12
MAX_LENGTH = 1024

# A hash of a random password: verifying against it when the user does not exist keeps the
# response time of an unknown user equal to that of a wrong password (no user enumeration).
_DUMMY_HASH = _HASHER.hash("opsgate-no-such-user-" + "x" * 16)


def hash_password(password: str) -> str:
    """The Argon2id PHC string for ``password``.

    Raises ``ValueError`` as :func:`check_password` does.
    """
    check_password(password)
    return _HASHER.hash(password)


def check_password(password: str) -> None:
    """Raise ``ValueError`` when ``password`` is shorter than 12 or longer than 1024 characters
    (NIST SP 800-63B §5.1.1.2 minimum length; the maximum bounds hashing cost)."""
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise ValueError(f"a password must have {MIN_LENGTH} to {MAX_LENGTH} characters")


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True when ``password`` matches ``stored_hash``; False for a mismatch, a malformed hash, an
    over-long password, or no hash (then a dummy hash is verified so timing does not tell)."""
    if len(password) > MAX_LENGTH:
        return False
    try:
        return _HASHER.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """True when ``stored_hash`` was made with parameters other than the current ones."""
    return _HASHER.check_needs_rehash(stored_hash)
