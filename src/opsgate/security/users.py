"""Users and their roles (``users`` table). Plain functions over an engine."""

from __future__ import annotations

from sqlalchemy import Engine, insert, select, update

from opsgate.clock import Clock
from opsgate.errors import NotFound
from opsgate.security.auth import ROLES
from opsgate.store.models import users


def add_user(engine: Engine, clock: Clock, user_id: str, role: str = "user") -> bool:
    """Create ``user_id`` with ``role``, or change the role of an existing user.

    Returns True when the user was created. Raises ``ValueError`` for an unknown role or an empty id.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if not user_id or len(user_id) > 128:
        raise ValueError("a user id is 1 to 128 characters")
    with engine.begin() as conn:
        changed = conn.execute(update(users).where(users.c.user_id == user_id).values(role=role))
        if changed.rowcount:
            return False
        conn.execute(insert(users).values(user_id=user_id, role=role, created_at=clock.now()))
        return True


def get_role(engine: Engine, user_id: str) -> str:
    """The role of ``user_id``; raises :class:`NotFound` when there is no such user."""
    with engine.connect() as conn:
        role = conn.execute(select(users.c.role).where(users.c.user_id == user_id)).scalar()
    if role is None:
        raise NotFound(f"no user {user_id!r}; create it with `opsgate users add {user_id}`")
    return role
