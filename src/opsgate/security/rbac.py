"""Role checks. Roles: ``user`` < ``operator`` < ``admin`` (each includes the rights of the lower)."""

from __future__ import annotations

from opsgate.security.auth import Principal
from opsgate.security.errors import Forbidden

_RANK = {"user": 0, "operator": 1, "admin": 2}


def require_role(principal: Principal, role: str) -> None:
    """Raise :class:`Forbidden` (403) unless ``principal`` holds ``role`` or a higher one."""
    if max(_RANK.get(r, -1) for r in principal.roles) < _RANK[role]:
        raise Forbidden(f"This action needs the {role} role")


def capped(principal: Principal, role: str) -> Principal:
    """``principal`` holding nothing above ``role`` (each higher role replaced by ``role``)."""
    roles = tuple(r if _RANK.get(r, -1) <= _RANK[role] else role for r in principal.roles)
    return principal if roles == principal.roles else Principal(principal.user_id, roles)
