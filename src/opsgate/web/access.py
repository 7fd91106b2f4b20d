"""Who may see the dashboard: a signed-in browser session (see :mod:`opsgate.security.sessions`)
of an ``operator`` or ``admin``. Users with role ``user`` see nothing; only admins change settings
(promote, roll back). The bearer-token API is not accepted here: the dashboard is a browser surface.

Dependencies (``Annotated``, like :mod:`opsgate.deps`): :data:`SessionDep` is the session's
principal or None; :data:`ViewerDep` is a session principal holding :data:`VIEW_ROLE` (401 / 403).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from opsgate.deps import SecurityDep
from opsgate.security.auth import Principal
from opsgate.security.errors import AuthFailure, Unauthorized
from opsgate.security.rbac import require_role
from opsgate.security.sessions import CSRF_COOKIE

VIEW_ROLE = "operator"
CHANGE_ROLE = "admin"


def session_principal(request: Request, services: SecurityDep) -> Principal | None:
    """The principal of the request's dashboard session, or None (no, bad, expired or revoked)."""
    return services.sessions.principal(request)


SessionDep = Annotated[Principal | None, Depends(session_principal)]


def require_session(principal: SessionDep) -> Principal:
    """The session principal holding :data:`VIEW_ROLE` or higher. Raises :class:`Unauthorized`
    (401) without a valid session and :class:`Forbidden` (403) for a lower role."""
    if principal is None:
        raise Unauthorized(AuthFailure.NO_SESSION)
    require_role(principal, VIEW_ROLE)
    return principal


ViewerDep = Annotated[Principal, Depends(require_session)]


def can_change(principal: Principal) -> bool:
    """True when ``principal`` may change settings (admin)."""
    return CHANGE_ROLE in principal.roles


def csrf_value(request: Request) -> str:
    """The signed double-submit CSRF token of the session (the ``opsgate_csrf`` cookie), for forms."""
    return request.cookies.get(CSRF_COOKIE, "")
