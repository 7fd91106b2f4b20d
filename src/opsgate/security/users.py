"""Users: roles, Argon2id password hashes and encrypted email addresses (``users`` table).

Plain functions over an engine. An email address is stored as an AES-256-GCM field ciphertext
(context ``"users.email:<user_id>"``) beside its blind index, so :func:`find_by_email` needs no
decryption and the database never holds the address in clear.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from opsgate.clock import Clock
from opsgate.errors import InvalidInput, NotFound
from opsgate.ledger.writer import InTransaction, Ledger
from opsgate.security.auth import ROLES, Principal
from opsgate.security.crypto import FieldCipher, normalise_email
from opsgate.security.errors import AuthFailure, Forbidden, Unauthorized
from opsgate.security.models import users
from opsgate.security.operator_input import check_identifier
from opsgate.security.rbac import capped
from opsgate.security.passwords import hash_password, needs_rehash, verify_password
from opsgate.security.reencrypt import USERS_EMAIL
from opsgate.security.refresh import RefreshTokens
from opsgate.store.db import begin_write

NO_SUCH_USER = "no such user; create it with `opsgate users add USER_ID`"


def add_user(engine: Engine, clock: Clock, user_id: str, role: str = "user") -> bool:
    """Create ``user_id`` with ``role`` outside the ledger, for seeding a database (demo, reports,
    tests). Returns True when the user was created, False when it already existed with ``role``.

    It never changes a role: a role change is an admin change, ledgered by :func:`set_role`
    (``opsgate users add USER_ID --role ROLE``, ``PUT /v1/admin/users/{id}``). Raises ``ValueError``
    for an unknown role or an existing user with another role, :class:`InvalidInput` for an id
    :func:`check_user_id` refuses (nothing is written then).
    """
    _check(user_id, role)
    where = users.c.user_id == user_id
    with begin_write(engine) as conn:
        before = conn.execute(select(users.c.role).where(where)).scalar()
        if before is None:
            conn.execute(insert(users).values(user_id=user_id, role=role, created_at=clock.now()))
            return True
    if before != role:
        raise ValueError(f"the user exists with role {before!r}; a role change is ledgered: "
                         f"`opsgate users add USER_ID --role {role}` or PUT /v1/admin/users/{{id}}")
    return False


def set_role(ledger: Ledger, refresh: RefreshTokens, user_id: str, role: str, actor: str,
             created_at: datetime | None = None) -> str | None:
    """Give ``user_id`` the ``role`` as ``actor`` (the admin API, ``opsgate users add``), in the
    transaction of its ledger entry ``user.role_set`` (``user_id``, ``role``, ``actor`` and
    ``before``, the role it had, ``null`` for a new user). Returns ``before``.

    With ``created_at`` a missing user is created; without, :class:`NotFound` and nothing is
    written. Then every refresh token and dashboard session of the user is revoked (the one place
    a role changes, so no path skips it); access tokens already issued are capped at the new role
    by :func:`current_principal`. Raises ``ValueError`` for an unknown role or an id that is empty
    or over 128 characters, :class:`Forbidden` when ``actor`` is ``user_id`` (nobody changes their
    own role), :class:`~opsgate.ledger.errors.LedgerUnavailable` when the entry cannot be written.
    """
    if actor == user_id:
        raise Forbidden("Nobody may change their own role")
    payload = {"user_id": user_id, "role": role, "actor": actor}
    change = _role_change(user_id, role, created_at)
    before = ledger.append_sync("user.role_set", payload, work=change, amend=_before).work_result
    refresh.revoke_user(user_id)
    return before


def current_principal(engine: Engine, principal: Principal) -> Principal:
    """``principal`` (from an access token) capped at its user's current role in ``users``: the
    lower of the token's role and the row's, so a demotion applies to tokens issued before it (a
    promotion needs a new token, e.g. a refresh). One primary-key read; for privileged routes.

    A principal without a row: an identity provider's user (``external``) keeps the role the IdP
    asserts; a local token's is capped at ``user`` (tester A F5: a locally signed admin token for
    a user that does not exist could be neither demoted nor revoked). opsgate issues local tokens
    only for existing users, so such a token was minted outside the user table."""
    with engine.connect() as conn:
        role = conn.execute(select(users.c.role).where(users.c.user_id == principal.user_id)).scalar()
    if role is None:
        return principal if principal.external else capped(principal, "user")
    return capped(principal, role)


def _role_change(user_id: str, role: str, created_at: datetime | None) -> InTransaction[str | None]:
    """Work on one connection: set the role, return the one the user had (``None``: created)."""
    _check(user_id, role)
    where = users.c.user_id == user_id

    def change(conn: Connection) -> str | None:
        before: str | None = conn.execute(select(users.c.role).where(where)).scalar()
        if before is not None:
            conn.execute(update(users).where(where).values(role=role))
        elif created_at is None:
            raise NotFound(NO_SUCH_USER)
        else:
            conn.execute(insert(users).values(user_id=user_id, role=role, created_at=created_at))
        return before

    return change


def _check(user_id: str, role: str) -> None:
    """``ValueError`` for an unknown role; :class:`InvalidInput` (422 over the API) for an id that
    breaks :func:`check_user_id`."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    check_user_id(user_id)


def check_user_id(user_id: str) -> None:
    """The one user-id rule (users, budgets): 1 to 128 characters, not blank, no control
    character, not secret-shaped (:func:`~opsgate.security.operator_input.check_identifier`), no
    leading or trailing whitespace (``"ghost  "`` would be a different user from ``ghost``, so
    a budget set for it would silently miss the user meant; the id is never trimmed, since the
    trimmed one would name someone else). Otherwise an id is opaque: an IdP subject
    (``auth0|5f…``), an e-mail address, ``a b`` or ``../x`` are ids like any other, only ever
    bound as SQL parameters and JSON strings, never used as a path. Raises
    :class:`InvalidInput` naming ``user_id``, never the value."""
    if not user_id or len(user_id) > 128:
        raise InvalidInput("user_id is 1 to 128 characters")
    check_identifier("user_id", user_id)
    if user_id != user_id.strip():
        raise InvalidInput("user_id must not start or end with whitespace")


def _before(role: str | None) -> dict[str, str | None]:
    return {"before": role}


def get_role(engine: Engine, user_id: str) -> str:
    """The role of ``user_id``; raises :class:`NotFound` when there is no such user."""
    with engine.connect() as conn:
        role = conn.execute(select(users.c.role).where(users.c.user_id == user_id)).scalar()
    if role is None:
        raise NotFound(NO_SUCH_USER)
    return role


def seed_user(engine: Engine, clock: Clock, user_id: str) -> str:
    """The role of ``user_id`` as it is, creating it as a ``user`` (outside the ledger, like
    :func:`add_user`) when there is none: the demo's and ``opsgate run``'s own users, which an admin
    may have promoted since. Raises ``ValueError`` for an id :func:`add_user` refuses."""
    try:
        return get_role(engine, user_id)
    except NotFound:
        add_user(engine, clock, user_id, "user")
        return get_role(engine, user_id)


def set_password(engine: Engine, user_id: str, password: str) -> None:
    """Store the Argon2id hash of ``password`` (``ValueError`` when it is too short or too long)."""
    _update(engine, user_id, password_hash=hash_password(password))


def set_email(engine: Engine, cipher: FieldCipher, user_id: str, email: str) -> None:
    """Store ``email`` encrypted with its blind index. Raises ``ValueError`` for a malformed
    address (:func:`check_email`) or one another user already has, :class:`NotFound` for an
    unknown user."""
    address = check_email(email)
    try:
        _update(
            engine,
            user_id,
            email_ciphertext=cipher.encrypt(address, USERS_EMAIL.context(user_id)),
            email_blind_index=cipher.blind_index(normalise_email(address)),
        )
    except IntegrityError:
        raise ValueError("another user has this email address") from None


def check_email(email: str) -> str:
    """``email`` without surrounding spaces; ``ValueError`` when it is not ``local@domain.tld``
    of at most 254 characters without inner whitespace."""
    address = email.strip()
    local, _, domain = address.rpartition("@")
    if not local or "." not in domain or len(address) > 254 or any(c.isspace() for c in address):
        raise ValueError("not an email address")
    return address


def get_email(engine: Engine, cipher: FieldCipher, user_id: str) -> str | None:
    """The decrypted email address of ``user_id``, or None when it has none."""
    with engine.connect() as conn:
        blob = conn.execute(select(users.c.email_ciphertext).where(users.c.user_id == user_id)).scalar()
    return None if blob is None else cipher.decrypt(blob, USERS_EMAIL.context(user_id))


def find_by_email(engine: Engine, cipher: FieldCipher, email: str) -> str | None:
    """The id of the user with ``email`` (case-insensitive, via the blind index), or None."""
    index = cipher.blind_index(normalise_email(email))
    with engine.connect() as conn:
        return conn.execute(select(users.c.user_id).where(users.c.email_blind_index == index)).scalar()


def authenticate(engine: Engine, cipher: FieldCipher, username: str, password: str) -> tuple[str, str]:
    """Check a password for a user named by id or email address; returns ``(user_id, role)``.

    Raises :class:`Unauthorized` with one message for an unknown user and a wrong password (the
    unknown case still verifies a dummy hash, so timing does not tell them apart). A hash made with
    outdated parameters is upgraded on success.
    """
    user_id = find_by_email(engine, cipher, username) if "@" in username else username
    with engine.connect() as conn:
        row = conn.execute(
            select(users.c.role, users.c.password_hash).where(users.c.user_id == user_id)
        ).first()
    stored = row.password_hash if row is not None else None
    if not verify_password(stored, password) or row is None or user_id is None:
        raise Unauthorized(AuthFailure.BAD_CREDENTIALS)
    if needs_rehash(row.password_hash):
        set_password(engine, user_id, password)
    return user_id, row.role


def _update(engine: Engine, user_id: str, **values: object) -> None:
    with begin_write(engine) as conn:
        changed = conn.execute(update(users).where(users.c.user_id == user_id).values(**values))
    if not changed.rowcount:
        raise NotFound(NO_SUCH_USER)
